"""The web view: ``popql serve DATASET`` opens a dataset in the browser.

Type PopQL (highlighted, completed from the live catalog, checked with the REPL's
diagnostics) or a text search, scan the results as a grid of thumbnails, click an image for
more like it, refine with positives and negatives, save the query as a population, and look at
each population's size, splits and a model's metrics with their intervals (docs/web.md).

* :mod:`popql.web.service`: :class:`WebService`, the session side (no HTTP);
* :mod:`popql.web.server`: the Starlette application and :func:`serve`;
* :mod:`popql.web.policy`: which statements and files a browser may reach;
* ``static/``: the front end, plain HTML, CSS and ES modules (no build step).

Needs the ``web`` extra: ``pip install "popql[web]"``.

>>> from popql.web.service import WebService
>>> WebService(None).run("SELECT 41 + 1 AS answer")["rows"]
[[42]]
"""

from __future__ import annotations

from .service import WebService

__all__ = ["WebService", "create_app", "serve"]


def create_app(*args: object, **kwargs: object) -> object:
    """:func:`popql.web.server.create_app` (imported lazily: Starlette is an extra)."""
    from .server import create_app as make

    return make(*args, **kwargs)  # type: ignore[arg-type]


def serve(*args: object, **kwargs: object) -> int:
    """:func:`popql.web.server.serve` (imported lazily: uvicorn is an extra)."""
    from .server import serve as run

    return run(*args, **kwargs)  # type: ignore[arg-type]
