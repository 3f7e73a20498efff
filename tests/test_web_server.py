"""The web view's HTTP API and its security (popql serve; docs/web.md).

A small versioned dataset of generated images (no model needed) is served through Starlette's
TestClient: queries and paging, thumbnails, the statements clicks build, saving populations,
and the refusals: path traversal, foreign files through NEAR IMAGE or a sample's uri, requests
without the token on a non-local bind, a wrong Host header, and writes without --allow-writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("PIL")

from starlette.testclient import TestClient

from popql.diagnostics import PopQLError
from popql.web.policy import refusal
from popql.web.server import create_app
from popql.web.service import (
    WebService,
    build_near,
    build_similar,
    create_population_statement,
)

LOCAL = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 generated greyscale images (brightness i/23), ingested with image_stats only."""
    from PIL import Image

    import popql

    root = tmp_path_factory.mktemp("webds")
    img = root / "img"
    img.mkdir()
    for i in range(24):
        Image.new("L", (40, 30), color=int(255 * i / 23)).save(img / f"{i:02d}.png")
    ds = root / "ds"
    popql.connect(ds).ingest(img, taggers=["image_stats"], embedder=None, progress=False)
    return ds


@pytest.fixture()
def service(dataset: Path, tmp_path: Path) -> WebService:
    return WebService(dataset, cache_dir=tmp_path / "cache")


@pytest.fixture()
def client(service: WebService) -> TestClient:
    return TestClient(create_app(service), base_url=LOCAL)


def _ids(service: WebService) -> list[str]:
    return service.session.sql("SELECT sample_id FROM samples ORDER BY uri").to_pydict()[
        "sample_id"
    ]


# -- the API ----------------------------------------------------------------------------------


def test_query_pages_and_grid_flag(client: TestClient) -> None:
    r = client.post(
        "/api/query", json={"text": "SELECT * FROM samples ORDER BY uri", "page_size": 10}
    )
    assert r.status_code == 200
    data = r.json()
    assert data["image"] is True and data["kind"] == "query"
    assert data["total"] == 24 and len(data["rows"]) == 10
    assert "brightness" in data["columns"]
    more = client.get(f"/api/result/{data['id']}", params={"offset": 20, "limit": 10}).json()
    assert more["offset"] == 20 and len(more["rows"]) == 4
    uri = data["columns"].index("uri")
    assert more["rows"][0][uri].endswith("20.png")
    # a result without sample ids is a table
    table = client.post("/api/query", json={"text": "SELECT count(*) AS n FROM samples"}).json()
    assert table["image"] is False and table["rows"] == [[24]]
    assert client.get("/api/result/nope").status_code == 410


def test_diagnostics_are_the_clis(client: TestClient) -> None:
    bad = "SELECT brightnes FROM samples"
    checked = client.post("/api/check", json={"text": bad}).json()
    (diag,) = checked["diagnostics"]
    assert diag["code"] == "N002" and diag["hints"] == ["did you mean 'brightness'?"]
    assert diag["span"]["start"] == 7 and diag["span"]["end"] == 16
    assert "^^^^^^^^^" in checked["rendered"] and "1 | SELECT brightnes" in checked["rendered"]
    ran = client.post("/api/query", json={"text": bad})
    assert ran.status_code == 400 and ran.json()["error"]["diagnostics"][0]["code"] == "N002"
    syntax = client.post("/api/check", json={"text": "SELEC 1"}).json()
    assert syntax["diagnostics"][0]["code"].startswith("P") and "^" in syntax["rendered"]
    assert client.post("/api/check", json={"text": "SELECT 1"}).json()["diagnostics"] == []


def test_thumbnails_and_sample_tags(
    client: TestClient, service: WebService, tmp_path: Path
) -> None:
    sid = _ids(service)[3]
    r = client.get(f"/thumb/{sid}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content[:3] == b"\xff\xd8\xff"
    tags = client.get(f"/api/sample/{sid}").json()
    assert tags["sample_id"] == sid and 0.0 <= tags["brightness"] <= 1.0
    assert client.get("/api/sample/0123456789abcdef").status_code == 404


def test_missing_thumbnail_is_generated_into_the_cache(
    client: TestClient, service: WebService, dataset: Path
) -> None:
    from popql.engine.images import thumbnail_path

    sid = _ids(service)[5]
    content_hash, _ = service._sample_index().ids[sid]
    stored = thumbnail_path(dataset, content_hash)
    moved = stored.with_suffix(".bak")
    stored.rename(moved)
    try:
        r = client.get(f"/thumb/{sid}")
        assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff"
        assert thumbnail_path(service.cache_dir, content_hash).is_file()
        assert not stored.exists()  # the dataset directory is never written
    finally:
        moved.rename(stored)


def test_build_statements() -> None:
    assert build_similar("it's red", 5) == (
        "SELECT * FROM samples WHERE image SIMILAR TO 'it''s red' TOP 5"
    )
    assert build_similar("x", 3, "label = 'a'") == (
        "SELECT * FROM samples WHERE (label = 'a') AND image SIMILAR TO 'x' TOP 3"
    )
    assert "NOT SAMPLE '0011223344556677'" in build_near(
        ["aabbccddeeff0011"], ["0011223344556677"], 7
    )
    with pytest.raises(PopQLError):
        build_near([], ["0011223344556677"])
    with pytest.raises(PopQLError):
        build_near(["x') OR 1=1 --"])
    assert create_population_statement("Weird Name", "SELECT 1;") == (
        'CREATE OR REPLACE POPULATION "Weird Name" AS SELECT 1'
    )


def test_build_endpoint_refuses_injection(client: TestClient) -> None:
    r = client.post("/api/build", json={"kind": "near", "positives": ["1' OR '1'='1"]})
    assert r.status_code == 400
    ok = client.post("/api/build", json={"kind": "similar", "text": "a 'quoted' shoe", "top": 9})
    assert ok.json()["statement"].endswith("SIMILAR TO 'a ''quoted'' shoe' TOP 9")


# -- writes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "CREATE POPULATION dark AS SELECT * FROM samples WHERE brightness < 0.5",
        "CREATE TABLE t AS SELECT 1",
        "DROP POPULATION IF EXISTS dark",
        "INSERT INTO samples SELECT * FROM samples",
        "SET datafusion.execution.batch_size = 1",
        "COPY (SELECT 1) TO '/tmp/popql-web-should-not-exist.csv'",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        # a write hidden after a read, and text that only looks like a read
        "SELECT 1; DROP TABLE samples",
        "/* SELECT */ CREATE VIEW v AS SELECT 1",
    ],
)
def test_writes_are_refused_without_allow_writes(client: TestClient, text: str) -> None:
    r = client.post("/api/query", json={"text": text})
    assert r.status_code == 400, r.text
    codes = [d["code"] for d in r.json()["error"]["diagnostics"]]
    assert codes == ["W001"]
    assert "--allow-writes" in r.json()["error"]["rendered"]
    assert not Path("/tmp/popql-web-should-not-exist.csv").exists()


def test_reads_are_not_mistaken_for_writes() -> None:
    from popql import syntax

    for text in [
        "SELECT 'CREATE TABLE x' AS drop_me",
        "SHOW POPULATIONS",
        "EXPLAIN SELECT 1",
        "DESCRIBE samples",
        "SHOW SPLITS",
    ]:
        (stmt,) = syntax.parse(text).statements
        assert refusal(stmt, allow_writes=False) is None, text


def test_save_population_needs_allow_writes(client: TestClient, service: WebService) -> None:
    body = {"name": "dim", "query": "SELECT * FROM samples WHERE brightness < 0.5"}
    r = client.post("/api/populations", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["diagnostics"][0]["code"] == "W001"
    assert "dim" not in service.session.population_names()
    assert client.get("/api/info").json()["allow_writes"] is False


def test_save_population_with_allow_writes(dataset: Path, tmp_path: Path) -> None:
    service = WebService(dataset, allow_writes=True, cache_dir=tmp_path)
    client = TestClient(create_app(service), base_url=LOCAL)
    body = {
        "name": "dim",
        "query": "SELECT * FROM samples WHERE brightness < 0.5;",
        "description": "dark ones",
    }
    r = client.post("/api/populations", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["statement"].startswith("CREATE OR REPLACE POPULATION dim DESCRIPTION")
    pops = client.get("/api/populations").json()
    (dim,) = [p for p in pops["populations"] if p["name"] == "dim"]
    expected = service.session.sql("SELECT count(*) FROM samples WHERE brightness < 0.5").scalar()
    assert dim["size"] == expected and 0 < expected < 24
    assert dim["description"] == "dark ones"
    splits = [s for s in pops["splits"] if s["population"] == "dim"]
    assert sum(s["samples"] for s in splits) == expected
    # another process (the REPL, Python) sees it, and its own writes reach the server
    code = (
        f"import popql; s = popql.connect({str(dataset)!r}); print(s.population_names());"
        " s.sql('CREATE POPULATION bright AS SELECT * FROM samples WHERE brightness >= 0.5')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "dim" in out.stdout
    names = [p["name"] for p in client.get("/api/populations").json()["populations"]]
    assert {"dim", "bright"} <= set(names)
    client.post("/api/query", json={"text": "DROP POPULATION bright; DROP POPULATION dim"})
    assert service.session.population_names() == []


# -- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/thumb/../../../../etc/passwd",
        "/thumb/..%2F..%2F..%2Fetc%2Fpasswd",
        "/thumb/%2e%2e%2f%2e%2e%2fmanifest.json",
        "/static/../../engine/session.py",
        "/static/..%2F..%2Fpyproject.toml",
        "/static/%2e%2e/service.py",
        "/thumb/0123456789abcdef",  # well-formed, not a sample of this dataset
        "/thumb/ZZZ",
    ],
)
def test_path_traversal_is_refused(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (404, 400), (path, r.status_code)
    assert b"root:" not in r.content and b"import" not in r.content


def test_a_sample_uri_cannot_point_at_another_file(
    dataset: Path, tmp_path: Path, service: WebService
) -> None:
    """The uri comes from the dataset, but the server reads it only if the file still hashes
    to the sample's content hash (a rewritten uri or a swapped file is not served)."""
    from popql.engine.images import thumbnail_path

    sid = _ids(service)[7]
    content_hash, _uri = service._sample_index().ids[sid]
    secret = tmp_path / "secret.png"
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(secret)
    # simulate a sample whose uri names another file: the index is what the server trusts
    index = service._sample_index()
    index.ids[sid] = (content_hash, str(secret))
    stored = thumbnail_path(dataset, content_hash)
    moved = stored.with_suffix(".bak")
    stored.rename(moved)
    try:
        client = TestClient(create_app(service), base_url=LOCAL)
        assert client.get(f"/thumb/{sid}").status_code == 404
    finally:
        moved.rename(stored)


@pytest.mark.parametrize(
    "image",
    [
        "/etc/passwd",
        "../../../../etc/hostname",
        "http://169.254.169.254/latest",
        "file:///etc/passwd",
    ],
)
def test_near_image_outside_the_dataset_is_refused(client: TestClient, image: str) -> None:
    text = f"SELECT * FROM samples WHERE NEAR IMAGE '{image}' TOP 3"
    r = client.post("/api/query", json={"text": text})
    assert r.status_code == 400
    (diag,) = r.json()["error"]["diagnostics"]
    assert diag["code"] == "W002"
    assert text[diag["span"]["start"] : diag["span"]["end"]].startswith("IMAGE")
    # also in SIMILARITY(...) and in the checker
    sim = f"SELECT SIMILARITY(IMAGE '{image}') FROM samples"
    assert client.post("/api/check", json={"text": sim}).json()["diagnostics"][0]["code"] == "W002"


def test_near_image_of_a_sample_passes_the_policy(service: WebService) -> None:
    _, uri = service._sample_index().ids[_ids(service)[0]]
    # no embeddings in this dataset: the statement gets past the policy to S002
    with pytest.raises(PopQLError) as err:
        service.run(f"SELECT * FROM samples WHERE NEAR IMAGE '{uri}' TOP 3")
    assert err.value.codes[0] == "S002"


def test_completion_lists_no_files(client: TestClient) -> None:
    r = client.post("/api/complete", json={"text": "SELECT * FROM samples WHERE NEAR IMAGE '/e"})
    assert r.status_code == 200
    assert all(s["kind"] != "path" for s in r.json()["suggestions"])


# -- token, Host, content type ----------------------------------------------------------------


def test_non_local_bind_requires_a_token(service: WebService) -> None:
    app = create_app(service, host="0.0.0.0")
    token = app.state.token
    assert token and len(token) >= 24
    client = TestClient(app, base_url="http://192.168.1.20:8765")
    for path in ["/", "/api/info", "/static/app.js", "/thumb/" + _ids(service)[0]]:
        assert client.get(path).status_code == 401, path
    assert client.post("/api/query", json={"text": "SELECT 1"}).status_code == 401
    assert client.get("/api/info", headers={"X-PopQL-Token": "wrong"}).status_code == 401
    assert client.get("/api/info", headers={"X-PopQL-Token": token}).status_code == 200
    assert client.get("/api/info", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # the URL printed by popql serve: sets an HttpOnly cookie and drops the token from the URL
    first = client.get(f"/?token={token}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "httponly" in first.headers["set-cookie"].lower()
    assert client.get("/api/info").status_code == 200  # the cookie now
    assert client.get("/?token=wrong", follow_redirects=False).status_code in (200, 401)


def test_local_bind_checks_the_host_header(service: WebService) -> None:
    app = create_app(service)
    assert app.state.token is None
    good = TestClient(app, base_url="http://localhost:8765")
    assert good.get("/api/info").status_code == 200
    rebound = TestClient(app, base_url="http://attacker.example:8765")
    assert rebound.get("/api/info").status_code == 421


def test_post_must_be_json(client: TestClient) -> None:
    r = client.post(
        "/api/query",
        content=json.dumps({"text": "SELECT 1"}),
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 415


def test_index_and_static_files_ship_in_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/app.js">' in page.text
    for name in ["app.js", "editor.js", "grid.js", "charts.js", "api.js", "style.css"]:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.content) > 500, name
    # no CDN, no network at run time
    for name in ["index.html", "app.js", "editor.js", "grid.js", "charts.js", "api.js"]:
        text = client.get("/" if name == "index.html" else f"/static/{name}").text
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text


def test_cli_serve_usage() -> None:
    from popql.repl.cli import main

    assert main(["serve", "/nonexistent/dataset/dir"]) == 1
    assert main(["serve", "--port", "0"]) == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_popql_serve_process_with_token(dataset: Path, tmp_path: Path) -> None:
    """`popql serve DATASET --host 0.0.0.0` in its own process: prints the URL with the token;
    the API refuses requests without it; a REPL-style session writes meanwhile."""
    import os
    import signal
    import time

    import httpx

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "popql.repl",
            "serve",
            str(dataset),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "read-only" in line and f":{port}/?token=" in line, line
        token = line.strip().rsplit("?token=", 1)[1]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"{base}/api/info", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert r.status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/api/info", headers=headers).json()["allow_writes"] is False
        # another session writes while the server is open; the server sees it
        import popql

        other = popql.connect(dataset)
        other.sql("CREATE POPULATION meanwhile AS SELECT * FROM samples WHERE brightness > 0.9")
        try:
            pops = httpx.get(f"{base}/api/populations", headers=headers).json()
            assert "meanwhile" in [p["name"] for p in pops["populations"]]
        finally:
            other.sql("DROP POPULATION meanwhile")
    finally:
        proc.send_signal(signal.SIGINT if os.name != "nt" else signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_raw_path_traversal_over_http(service: WebService) -> None:
    """The same attempts sent byte for byte (http.client does not normalise paths as httpx
    does) to uvicorn."""
    import http.client
    import threading
    import time

    uvicorn = pytest.importorskip("uvicorn")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        for path in [
            "/static/../../pyproject.toml",
            "/static/../server.py",
            "/static/%2e%2e/%2e%2e/pyproject.toml",
            "/static/..\\..\\pyproject.toml",
            "/static//etc/passwd",
            "/thumb/../../etc/passwd",
            "/thumb/..%2f..%2fmanifest.json",
        ]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            assert response.status in (400, 404), (path, response.status)
            assert b"root:" not in body and b"[project]" not in body and b"import" not in body
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/static/app.js")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
