"""Shared fixtures for the PopQL test-suite (kept deliberately small)."""

from __future__ import annotations

import os

import pytest
from lark import Lark


@pytest.fixture(scope="session")
def popql_parser() -> Lark:
    """The LALR parser, built (or loaded from Lark's cache) once per test process."""
    from popql.syntax import parser

    return parser()


@pytest.fixture(scope="session")
def update_golden() -> bool:
    """True when golden and snapshot files should be rewritten: ``POPQL_UPDATE_GOLDEN=1``."""
    return os.environ.get("POPQL_UPDATE_GOLDEN", "") not in ("", "0")
