"""``popql test SUITE.popql... [--model m] [--junit FILE] [--report FILE]``.

Runs each suite file (its setup statements, then its EXPECT statements) with
:func:`popql.engine.testing.run_suite`, prints a pass / fail table per file and a summary, and
writes JUnit XML and a self-contained HTML report on request. Kept apart from ``cli.py``: the
CLI only adds the subcommand (:func:`add_parser`) and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEST_EPILOG = """\
exit codes:
  0    every expectation passed (inconclusive ones too, unless --inconclusive fail)
  1    an expectation failed or could not run, a statement of a suite failed (diagnostics
       on stderr), or, with --inconclusive fail, an expectation was inconclusive
  2    bad command-line usage
  3    internal error: a bug in PopQL (please report it)
  130  interrupted (Ctrl-C)
"""


def add_parser(
    command: Callable[[str, str, str], argparse.ArgumentParser],
    data_options: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """Add ``popql test`` to the CLI's subparsers."""
    t = command(
        "test",
        "run the EXPECT statements of .popql suites: pass / fail table, JUnit, HTML",
        "Run each suite file in order (setup statements such as CREATE VIEW or IMPORT "
        "PREDICTIONS, then every EXPECT statement) and print a table of expectations: PASS, "
        "FAIL, INCONCLUSIVE (support below MIN SUPPORT, or the 95% interval straddles the "
        "threshold) or ERROR (the expectation could not run). EXPECT without FOR MODEL uses "
        "--model.",
    )
    t.epilog = TEST_EPILOG
    t.add_argument("files", metavar="SUITE", nargs="+", help=".popql suite files")
    data_options(t)
    t.add_argument(
        "--model",
        metavar="NAME[@VERSION]",
        help="the model for EXPECT statements without FOR MODEL (default: the only model "
        "with predictions)",
    )
    t.add_argument("--junit", metavar="FILE", help="write JUnit XML to FILE")
    t.add_argument(
        "--report", metavar="FILE", help="write a self-contained HTML report with charts to FILE"
    )
    t.add_argument(
        "--decide",
        choices=("interval", "point"),
        default="interval",
        help="interval: the 95%% interval must clear the threshold to pass or fail, else the "
        "expectation is inconclusive (default); point: the estimate decides",
    )
    t.add_argument(
        "--inconclusive",
        choices=("ok", "fail"),
        default="ok",
        help="whether an inconclusive expectation fails the run (default: ok, it is reported)",
    )
    t.add_argument(
        "--min-support",
        metavar="N",
        type=int,
        default=1,
        help="minimum support for expectations without MIN SUPPORT (default 1)",
    )
    return t


def run(args: argparse.Namespace, open_session: Callable[[argparse.Namespace], Any]) -> int:
    """Run ``popql test``; returns the exit status (0 or 1; errors raise PopQLError)."""
    from popql.engine.testing import Policy, format_report, html_report, junit_xml, run_suite

    policy = Policy(
        decide=args.decide, min_support=args.min_support, inconclusive=args.inconclusive
    )
    reports = []
    for file in args.files:
        session = open_session(args)
        session.default_model = args.model
        report = run_suite(session, file, policy)
        reports.append(report)
        sys.stdout.write(format_report(report) + "\n")
        sys.stdout.flush()
    if args.junit:
        Path(args.junit).write_text(junit_xml(reports), encoding="utf-8")
    if args.report:
        Path(args.report).write_text(html_report(reports), encoding="utf-8")
    return 0 if all(r.ok for r in reports) else 1
