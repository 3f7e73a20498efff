"""pytest plugin: EXPECT statements of ``.popql`` suites run as pytest items.

Installed with PopQL (entry point ``pytest11``: ``popql``). Collection is opt-in: a ``.popql``
file is collected only when its name matches one of the ``popql_suites`` patterns (ini
option; default ``test_*.popql`` and ``*_test.popql``) **and** it holds at least one EXPECT
statement, so parser corpora and ordinary query files are never collected. Each EXPECT is an
item named after the statement; the file's other statements run once, in order, before its
first item runs.

* pass -> passed; fail or error -> failed (the reason and the interval are shown);
  inconclusive -> skipped with the reason (failed under ``popql_inconclusive = fail``).
* Options (ini, or the command line): ``popql_dataset`` / ``--popql-dataset DIR`` (the
  session's dataset; relative to the rootdir; default: an in-memory session),
  ``popql_model`` / ``--popql-model M`` (the model of EXPECTs without FOR MODEL),
  ``popql_decide`` (``interval`` or ``point``), ``popql_inconclusive`` (``ok`` or ``fail``),
  ``popql_min_support``.
* A ``conftest.py`` may build the session itself with the hook
  ``pytest_popql_session(path, config)`` (return a :class:`popql.engine.Session`, or None for
  the default one): log predictions of a model trained in the test run, register tables...

Example ``pyproject.toml``::

    [tool.pytest.ini_options]
    popql_suites = ["tests/suites/*.popql"]
    popql_dataset = "data/ds"
"""

from __future__ import annotations

import contextlib
import fnmatch
from pathlib import Path
from typing import Any

import pytest

DEFAULT_PATTERNS = ("test_*.popql", "*_test.popql")


class _Hooks:
    @pytest.hookspec(firstresult=True)
    def pytest_popql_session(self, path: Path, config: pytest.Config) -> Any:
        """Return the :class:`popql.engine.Session` to run the suite ``path`` in (or None)."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(_Hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("popql", "PopQL expectations (.popql suites)")
    group.addoption("--popql-dataset", metavar="DIR", help="dataset directory for .popql suites")
    group.addoption(
        "--popql-model", metavar="NAME[@VERSION]", help="model for EXPECT without FOR MODEL"
    )
    parser.addini(
        "popql_suites",
        type="linelist",
        default=list(DEFAULT_PATTERNS),
        help="glob patterns (file names, or paths relative to the rootdir) of .popql suites",
    )
    parser.addini("popql_dataset", default="", help="dataset directory for .popql suites")
    parser.addini("popql_model", default="", help="model for EXPECT without FOR MODEL")
    parser.addini("popql_decide", default="interval", help="interval or point")
    parser.addini("popql_inconclusive", default="ok", help="ok or fail")
    parser.addini("popql_min_support", default="1", help="minimum support without MIN SUPPORT")


def _matches(path: Path, config: pytest.Config) -> bool:
    patterns = config.getini("popql_suites") or []
    rel = path.as_posix()
    with contextlib.suppress(ValueError):
        rel = path.relative_to(config.rootpath).as_posix()
    return any(fnmatch.fnmatch(path.name, pat) or fnmatch.fnmatch(rel, pat) for pat in patterns)


def _has_expect(text: str) -> bool:
    if "expect" not in text.lower():
        return False
    from popql import ast as A
    from popql import syntax
    from popql.diagnostics import PopQLError

    try:
        script = syntax.parse(text)
    except PopQLError:
        return True  # a suite that does not parse is reported, not silently ignored
    return any(isinstance(s, A.Expect) for s in script.statements)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".popql" or not _matches(file_path, parent.config):
        return None
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not _has_expect(text):
        return None
    return PopQLFile.from_parent(parent, path=file_path)


class PopQLFile(pytest.File):
    """A ``.popql`` suite: one item per EXPECT statement."""

    _report: Any = None
    _error: BaseException | None = None

    def collect(self) -> Any:
        from popql import ast as A
        from popql import syntax
        from popql.format import format_node

        text = self.path.read_text(encoding="utf-8")
        script = syntax.parse(text, file=str(self.path))
        index = 0
        for stmt in script.statements:
            if isinstance(stmt, A.Expect):
                line = stmt.span.line if stmt.span else 0
                yield PopQLItem.from_parent(
                    self, name=f"{format_node(stmt)} [line {line}]", index=index, line=line
                )
                index += 1

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException]
    ) -> str | Any:
        from popql.diagnostics import PopQLError

        if isinstance(excinfo.value, PopQLError):  # a suite that does not parse
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def report(self) -> Any:
        """Run the suite once (on first use) and return its SuiteReport."""
        if self._report is None and self._error is None:
            try:
                self._report = self._run()
            except BaseException as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._report

    def _run(self) -> Any:
        from popql.engine import connect
        from popql.engine.testing import Policy, run_suite

        config = self.config
        session = config.hook.pytest_popql_session(path=self.path, config=config)
        if session is None:
            dataset = config.getoption("popql_dataset") or config.getini("popql_dataset")
            if dataset and not Path(dataset).is_absolute():
                dataset = str(config.rootpath / dataset)
            session = connect(dataset or None)
        model = config.getoption("popql_model") or config.getini("popql_model")
        if model:
            session.default_model = model
        policy = Policy(
            decide=config.getini("popql_decide") or "interval",
            inconclusive=config.getini("popql_inconclusive") or "ok",
            min_support=int(config.getini("popql_min_support") or 1),
        )
        return run_suite(session, self.path, policy)


class PopQLExpectationFailed(Exception):
    """An EXPECT that failed (or could not run)."""


class PopQLItem(pytest.Item):
    """One EXPECT statement."""

    def __init__(self, *, index: int, line: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.line = line

    def runtest(self) -> None:
        parent = self.parent
        assert isinstance(parent, PopQLFile)
        report = parent.report()
        outcome = report.outcomes[self.index]
        self.user_properties.extend(
            [
                ("metric", outcome.metric),
                ("population", outcome.population),
                ("n", outcome.n),
                ("value", outcome.value),
                ("lo", outcome.lo),
                ("hi", outcome.hi),
            ]
        )
        if outcome.status == "pass":
            return
        if outcome.status == "inconclusive" and report.policy.inconclusive == "ok":
            raise pytest.skip.Exception(f"inconclusive: {outcome.reason}", _use_item_location=True)
        if outcome.status == "error":
            raise PopQLExpectationFailed(
                f"ERROR: {outcome.expectation}\n  {outcome.reason} ({outcome.file}:{outcome.line})"
            )
        raise PopQLExpectationFailed(
            f"{outcome.status.upper()}: {outcome.expectation}\n"
            f"  model {outcome.model}@{outcome.version}, population {outcome.population}: "
            f"n = {outcome.n}, {outcome.metric} = {outcome.value:.4f}, "
            f"95% interval [{outcome.lo:.4f}, {outcome.hi:.4f}]\n"
            f"  {outcome.reason}"
        )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from popql.diagnostics import PopQLError

        if isinstance(excinfo.value, PopQLExpectationFailed | PopQLError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, max(self.line - 1, 0), self.name
