"""The HTTP side of the web view: a Starlette application over one :class:`WebService`.

``create_app(service, host=..., token=...)`` builds the ASGI app; :func:`serve` runs it with
uvicorn (``popql serve``). Routes (JSON unless said otherwise):

========================  =================================================================
``GET /``                 the page (``static/index.html``); ``?token=T`` sets the cookie
``GET /static/...``       the front end (plain ES modules, shipped in the wheel)
``GET /api/info``         dataset, version, tables, populations, models, write permission
``GET /api/keywords``     the grammar's keywords (from ``popql.repl.highlight``)
``POST /api/complete``    ``{text, cursor}`` → suggestions (``popql.repl.completion``)
``POST /api/check``       ``{text}`` → diagnostics (JSON and rendered with carets)
``POST /api/query``       ``{text}`` → the result's first page (``id``, columns, rows, total)
``GET /api/result/ID``    ``?offset=&limit=`` → more rows of a kept result
``POST /api/build``       ``{kind: similar|near, ...}`` → the statement clicks build
``GET /api/sample/ID``    every column (tag) of a sample
``GET /thumb/ID``         the sample's JPEG thumbnail (only samples of the open dataset)
``POST /api/populations`` ``{name, query, description}`` → CREATE POPULATION (writes only)
``GET /api/populations``  sizes, descriptions, queries, split breakdown, models
``GET /api/evaluate``     ``?model=&population=...`` → metrics with intervals, expectations
``GET /api/failures``     ``?model=`` → FIND FAILURES slices with ready statements
========================  =================================================================

Security: a server bound to anything but a loopback address requires a token (a cookie, an
``Authorization: Bearer`` header or ``X-PopQL-Token``); loopback servers check the ``Host``
header (no DNS rebinding); POSTs must be ``application/json`` (a cross-site form cannot send
one without a CORS preflight, which this server never answers).
"""

from __future__ import annotations

import hmac
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from popql.diagnostics import PopQLError

from .service import PAGE_SIZE, WebService, build_near, build_similar, diagnostics_payload

__all__ = ["LOOPBACK", "create_app", "is_loopback", "serve", "static_dir"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
COOKIE = "popql_token"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    return host in LOOPBACK or host.startswith("127.")


def static_dir() -> Path:
    """The folder of the front end's files (package data of ``popql.web``)."""
    return Path(str(resources.files("popql.web") / "static"))


class _Guard:
    """Token and Host checks in front of every route (pure ASGI middleware)."""

    def __init__(self, app: ASGIApp, *, token: str | None, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.token = token
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.hosts is not None:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
            if host not in self.hosts:
                await JSONResponse({"error": "unexpected Host header"}, 421)(scope, receive, send)
                return
        if self.token is not None and not self._authorised(request):
            given = request.query_params.get("token")
            if request.url.path == "/" and given and hmac.compare_digest(given, self.token):
                response: Response = RedirectResponse("/", 303)
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
                await response(scope, receive, send)
                return
            await JSONResponse({"error": "a token is required"}, 401)(scope, receive, send)
            return
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                await JSONResponse({"error": "POST bodies must be application/json"}, 415)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)

    def _authorised(self, request: Request) -> bool:
        assert self.token is not None
        candidates = [
            request.cookies.get(COOKIE),
            request.headers.get("x-popql-token"),
        ]
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            candidates.append(auth[7:].strip())
        return any(c and hmac.compare_digest(c, self.token) for c in candidates)


Handler = Callable[[Request], Awaitable[Response]]


def _api(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
    """Wrap a route: PopQL diagnostics become 400 with the diagnostics JSON."""

    async def route(request: Request) -> Response:
        try:
            result = await fn(request)
        except PopQLError as err:
            text = getattr(err, "source", None) or ""
            return JSONResponse({"error": diagnostics_payload(err, text)}, 400)
        except KeyError:
            return JSONResponse({"error": {"message": "expired or unknown result"}}, 410)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": {"message": str(exc)}}, 400)
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    return route


async def _body(request: Request) -> dict[str, Any]:
    data = await request.json()
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _text(data: dict[str, Any], key: str = "text") -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"expected a string '{key}'")
    return value


def create_app(
    service: WebService,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
) -> Starlette:
    """The ASGI application. A non-loopback ``host`` without a ``token`` gets a random one
    (read it back from ``app.state.token``)."""
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    hosts = LOOPBACK | {host} if is_loopback(host) else None
    static = static_dir()

    async def index(request: Request) -> Response:
        return FileResponse(static / "index.html", headers={"Cache-Control": "no-store"})

    async def info(request: Request) -> Any:
        return await run_in_threadpool(service.info)

    async def keywords(request: Request) -> Any:
        return await run_in_threadpool(service.keywords)

    async def complete(request: Request) -> Any:
        data = await _body(request)
        cursor = data.get("cursor")
        cursor = int(cursor) if isinstance(cursor, int) else None
        return {"suggestions": await run_in_threadpool(service.complete, _text(data), cursor)}

    async def check(request: Request) -> Any:
        data = await _body(request)
        return await run_in_threadpool(service.check, _text(data))

    async def query(request: Request) -> Any:
        data = await _body(request)
        size = data.get("page_size", PAGE_SIZE)
        return await run_in_threadpool(service.run, _text(data), int(size))

    async def result_page(request: Request) -> Any:
        rid = request.path_params["rid"]
        offset = int(request.query_params.get("offset", "0"))
        limit = int(request.query_params.get("limit", str(PAGE_SIZE)))
        return await run_in_threadpool(service.page, rid, offset, limit)

    async def build(request: Request) -> Any:
        data = await _body(request)
        top = int(data.get("top", 100))
        if data.get("kind") == "similar":
            where = data.get("where")
            return {"statement": build_similar(_text(data), top, where if where else None)}
        if data.get("kind") == "near":
            pos = data.get("positives") or []
            neg = data.get("negatives") or []
            if not isinstance(pos, list) or not isinstance(neg, list):
                raise ValueError("positives and negatives are lists of sample ids")
            return {"statement": build_near(pos, neg, top)}
        raise ValueError("kind is 'similar' or 'near'")

    async def sample(request: Request) -> Any:
        found = await run_in_threadpool(service.sample, request.path_params["sid"])
        if found is None:
            return JSONResponse({"error": {"message": "no such sample"}}, 404)
        return found

    async def thumb(request: Request) -> Response:
        path = await run_in_threadpool(service.thumbnail, request.path_params["sid"])
        if path is None:
            return Response("no such image", 404, media_type="text/plain")
        return FileResponse(
            path,
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=86400, immutable"},
        )

    async def populations(request: Request) -> Any:
        if request.method == "POST":
            data = await _body(request)
            desc = data.get("description")
            return await run_in_threadpool(
                service.save_population,
                _text(data, "name"),
                _text(data, "query"),
                desc if isinstance(desc, str) and desc else None,
            )
        return await run_in_threadpool(service.populations)

    async def evaluate(request: Request) -> Any:
        model = request.query_params.get("model", "")
        pops = request.query_params.getlist("population")
        return await run_in_threadpool(service.evaluate, model, pops)

    async def failures(request: Request) -> Any:
        return await run_in_threadpool(service.failures, request.query_params.get("model", ""))

    routes = [
        Route("/", index),
        Route("/api/info", _api(info)),
        Route("/api/keywords", _api(keywords)),
        Route("/api/complete", _api(complete), methods=["POST"]),
        Route("/api/check", _api(check), methods=["POST"]),
        Route("/api/query", _api(query), methods=["POST"]),
        Route("/api/result/{rid:str}", _api(result_page)),
        Route("/api/build", _api(build), methods=["POST"]),
        Route("/api/sample/{sid:str}", _api(sample)),
        Route("/thumb/{sid:str}", thumb),
        Route("/api/populations", _api(populations), methods=["GET", "POST"]),
        Route("/api/evaluate", _api(evaluate)),
        Route("/api/failures", _api(failures)),
        Mount("/static", app=StaticFiles(directory=static), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, token=token, hosts=hosts)],
    )
    app.state.token = token
    app.state.service = service
    return app


def serve(
    dataset: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allow_writes: bool = False,
    suites: list[str] | None = None,
    cache_dir: str | None = None,
    open_browser: bool = False,
) -> int:
    """Run the web view until interrupted (``popql serve``); prints the URL to open."""
    import uvicorn

    service = WebService(
        dataset, allow_writes=allow_writes, suites=suites or (), cache_dir=cache_dir
    )
    app = create_app(service, host=host, token=token)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if app.state.token:
        url += f"?token={app.state.token}"
    mode = "read-write" if allow_writes else "read-only"
    print(f"popql serve: {dataset or 'in-memory session'} ({mode}) at {url}", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


class ServerThread:
    """uvicorn serving ``app`` on a free loopback port, in a daemon thread, for as long as the
    ``with`` block runs (tests, benchmarks, notebooks)::

        with ServerThread(create_app(WebService("fashion-ds"))) as server:
            httpx.get(server.url + "api/info")
    """

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"
