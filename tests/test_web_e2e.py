"""End to end: the web view in a real headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium; no browser is downloaded).

A Fashion-MNIST dataset (300 images, the offline test CLIP, image_stats) is served by uvicorn
in a thread; the test types a query and sees the grid, searches by text, clicks an image for
more like it, refines with a positive and a negative, saves a population and finds it on the
populations page with its split chart, and — once evaluation is available — sees a model's
metrics chart with a failing expectation marked and saves a population found by failure
discovery. A screenshot of each step is kept: under ``$POPQL_TEST_ARTIFACTS/web`` when set,
else in pytest's temporary directory (the path is printed).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("selenium")

import fmnist_data  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402

from popql.web.server import ServerThread, create_app  # noqa: E402
from popql.web.service import WebService  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 60.0


def _evaluation_available() -> bool:
    from popql.engine.session import Session

    return hasattr(Session, "log_predictions") and hasattr(Session, "model_names")


def _completion_available() -> bool:
    try:
        import popql.repl.completion  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = os.environ.get("POPQL_TEST_ARTIFACTS")
    folder = Path(keep) / "web" if keep else tmp_path_factory.mktemp("web-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"web view screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The dataset, and (when evaluation is available) a classifier that is right everywhere
    but on dark images, plus a suite with an expectation it fails."""
    import popql

    root = tmp_path_factory.mktemp("web-e2e")
    ds = fmnist_data.build(root, 300)
    session = popql.connect(ds)
    rows = session.sql("SELECT sample_id, label, brightness FROM samples").to_pylist()
    suite = root / "quality.popql"
    suite.write_text(
        "EXPECT accuracy >= 0.9 ON dark FOR MODEL clf;\nEXPECT accuracy >= 0.5 ON bright;\n",
        encoding="utf-8",
    )
    dark = [r for r in rows if r["brightness"] < 0.2]
    if _evaluation_available():
        preds = [
            {
                "sample_id": r["sample_id"],
                "label": ("bag" if r["label"] != "bag" else "shirt")
                if r["brightness"] < 0.2
                else r["label"],
            }
            for r in rows
        ]
        session.log_predictions(model="clf", version="1", data=preds)
    session.sql(
        "CREATE POPULATION dark AS SELECT * FROM samples WHERE brightness < 0.2;"
        "CREATE POPULATION bright AS SELECT * FROM samples WHERE brightness >= 0.2;"
        "HOLD OUT 25 PERCENT OF dark SALT 'web'"
    )
    return {"ds": ds, "suite": suite, "rows": rows, "dark": len(dark)}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "chromium and chromium-driver are not installed (apt-get install chromium "
            "chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # elements come and go while the page updates
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))


def by_id(driver: WebDriver, name: str) -> WebElement:
    return driver.find_element(By.ID, name)


def shoot(driver: WebDriver, artifacts: Path, name: str) -> None:
    path = artifacts / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"


def set_editor(driver: WebDriver, text: str) -> None:
    area = by_id(driver, "editor-input")
    area.click()
    area.send_keys(Keys.CONTROL, "a")
    area.send_keys(Keys.DELETE)
    area.send_keys(text)
    area.send_keys(Keys.ESCAPE)


def editor_value(driver: WebDriver) -> str:
    return str(driver.execute_script("return document.getElementById('editor-input').value"))


def loaded_cells(driver: WebDriver) -> list[WebElement]:
    """Grid cells whose thumbnail has loaded (naturalWidth > 0)."""
    cells = driver.find_elements(By.CSS_SELECTOR, "#grid .cell")
    return [
        c
        for c in cells
        if driver.execute_script(
            "const i = arguments[0].querySelector('img');return i.complete && i.naturalWidth > 0;",
            c,
        )
    ]


def status_rows(driver: WebDriver) -> int:
    text = by_id(driver, "status").text
    return int(text.split(" row")[0].replace(",", "")) if " row" in text else -1


def severe_console_messages(driver: WebDriver) -> list[str]:
    return [m["message"] for m in driver.get_log("browser") if m.get("level") == "SEVERE"]


def test_web_view_end_to_end(
    world: dict[str, Any], browser: WebDriver, artifacts: Path, tmp_path: Path
) -> None:
    import popql

    service = WebService(
        world["ds"], allow_writes=True, suites=[world["suite"]], cache_dir=tmp_path / "cache"
    )
    d = browser
    with ServerThread(create_app(service)) as server:
        d.get(server.url)
        wait_for(lambda: d.execute_script("return document.body.dataset.ready"), "the page")
        assert "read-write" in by_id(d, "dataset-info").text

        # 1. type a query, see the grid
        set_editor(d, "SELECT sample_id, label, brightness FROM samples WHERE label = 'sneaker'")
        by_id(d, "run").click()
        sneakers = sum(r["label"] == "sneaker" for r in world["rows"])
        wait_for(lambda: status_rows(d) == sneakers, "the row count")
        wait_for(lambda: len(loaded_cells(d)) >= min(sneakers, 10), "thumbnails")
        first = loaded_cells(d)[0]
        assert "label: sneaker" in (first.get_attribute("title") or "")  # tags on hover
        shoot(d, artifacts, "01-query-grid")

        # diagnostics as in the REPL: caret and "did you mean"
        set_editor(d, "SELECT brightnes FROM samples")
        wait_for(lambda: "did you mean 'brightness'" in by_id(d, "diagnostics").text, "diagnostics")
        assert "^^^^^^^^^" in by_id(d, "diagnostics").text
        assert d.find_elements(By.CSS_SELECTOR, "#editor-highlight .tok-err")
        shoot(d, artifacts, "02-diagnostics")

        # 2. text search box
        search = by_id(d, "search")
        search.clear()
        search.send_keys("a photo of a sneaker")
        top = by_id(d, "search-top")
        top.clear()
        top.send_keys("20")
        by_id(d, "search-btn").click()
        wait_for(lambda: status_rows(d) == 20, "the text search")
        assert "SIMILAR TO 'a photo of a sneaker' TOP 20" in editor_value(d)
        wait_for(lambda: len(loaded_cells(d)) >= 10, "search thumbnails")
        labels = service.session.sql(editor_value(d)).to_pydict()["label"]
        assert sum(x == "sneaker" for x in labels) >= 12  # the test CLIP finds sneakers
        shoot(d, artifacts, "03-text-search")

        # 3. click an image: its tags in the side panel, then more like this
        cell = loaded_cells(d)[0]
        sid = cell.get_attribute("data-sid")
        cell.click()
        wait_for(lambda: sid in by_id(d, "sample-tags").text, "the side panel")
        assert "brightness" in by_id(d, "sample-tags").text
        by_id(d, "more-like").click()
        wait_for(lambda: f"NEAR SAMPLE '{sid}' TOP 20" in editor_value(d), "the NEAR statement")
        wait_for(lambda: status_rows(d) == 20, "similar images")
        wait_for(lambda: len(loaded_cells(d)) >= 10, "similar thumbnails")
        expected = service.session.sql(editor_value(d)).to_pydict()["sample_id"]
        shown = {
            int(c.get_attribute("data-index") or -1): c.get_attribute("data-sid")
            for c in d.find_elements(By.CSS_SELECTOR, "#grid .cell")
        }
        assert shown == {i: sid for i, sid in enumerate(expected)}  # all 20, in rank order
        shoot(d, artifacts, "04-more-like-this")

        # 4. positives and negatives refine the search
        cells = loaded_cells(d)
        pos, neg = cells[0].get_attribute("data-sid"), cells[1].get_attribute("data-sid")
        cells[0].click()
        by_id(d, "mark-pos").click()
        loaded_cells(d)[1].click()
        by_id(d, "mark-neg").click()
        assert "1 positive, 1 negative" in by_id(d, "selection").text
        by_id(d, "refine").click()
        wait_for(
            lambda: f"NEAR (SAMPLE '{pos}', NOT SAMPLE '{neg}') TOP 20" in editor_value(d),
            "the refined statement",
        )
        wait_for(lambda: status_rows(d) == 20, "refined results")
        shoot(d, artifacts, "05-refined")

        # 5. save the current query as a population
        by_id(d, "save-name").send_keys("like_sneaker")
        by_id(d, "save-desc").send_keys("found by clicking")
        by_id(d, "save-btn").click()
        wait_for(lambda: "Saved population like_sneaker" in by_id(d, "message").text, "saving")
        assert "like_sneaker" in popql.connect(world["ds"]).population_names()
        shoot(d, artifacts, "06-saved")

        # 6. the populations page: size and split chart
        by_id(d, "nav-populations").click()
        row = wait_for(
            lambda: d.find_element(By.CSS_SELECTOR, "#pop-table tr[data-population=like_sneaker]"),
            "the saved population",
        )
        assert row.find_elements(By.TAG_NAME, "td")[1].text == "20"
        assert "found by clicking" in row.text
        wait_for(
            lambda: d.find_elements(
                By.CSS_SELECTOR, "#split-chart rect[data-population=like_sneaker]"
            ),
            "the split chart",
        )
        # the hold-out shows as a second split of dark
        assert d.find_elements(
            By.CSS_SELECTOR, "#split-chart rect[data-population=dark][data-split=test]"
        )
        shoot(d, artifacts, "07-populations")

        if not _evaluation_available():
            pytest.skip("evaluation (EVALUATE, EXPECT, FIND FAILURES) is not in this build yet")

        # 7. metrics per population with intervals; the failing expectation is marked
        wait_for(lambda: by_id(d, "model-select").get_attribute("value") == "clf", "models")
        by_id(d, "eval-btn").click()
        bars = wait_for(
            lambda: d.find_elements(
                By.CSS_SELECTOR, "#metrics-chart svg[data-metric=accuracy] rect.bar"
            ),
            "the metrics chart",
        )
        assert len(bars) >= 3
        assert d.find_elements(By.CSS_SELECTOR, "#metrics-chart svg[data-metric=accuracy] line.ci")
        failing = d.find_elements(
            By.CSS_SELECTOR, "#metrics-chart svg[data-metric=accuracy] rect[data-status=fail]"
        )
        assert [b.get_attribute("data-population") for b in failing] == ["dark"]
        assert d.find_elements(By.CSS_SELECTOR, "#expectations tr.fail")
        assert d.find_elements(By.CSS_SELECTOR, "#expectations tr.pass")
        assert "EVALUATE clf ON" in by_id(d, "eval-statement").text
        shoot(d, artifacts, "08-metrics")

        # 8. failure discovery: ready populations, saved with a click
        by_id(d, "failures-btn").click()
        buttons = wait_for(
            lambda: d.find_elements(By.CSS_SELECTOR, "#failures button.save-failure"),
            "failure slices",
        )
        assert "CREATE POPULATION failures_clf_1" in by_id(d, "failures").text
        assert "brightness" in by_id(d, "failures").text
        buttons[0].click()
        wait_for(
            lambda: d.find_elements(
                By.CSS_SELECTOR, "#pop-table tr[data-population=failures_clf_1]"
            ),
            "the saved failure population",
        )
        shoot(d, artifacts, "09-failures")
        assert severe_console_messages(d) == []


def test_read_only_server_says_so(
    world: dict[str, Any], browser: WebDriver, artifacts: Path, tmp_path: Path
) -> None:
    service = WebService(world["ds"], cache_dir=tmp_path / "cache")
    d = browser
    with ServerThread(create_app(service)) as server:
        d.get(server.url)
        wait_for(lambda: d.execute_script("return document.body.dataset.ready"), "the page")
        assert not by_id(d, "save-btn").is_enabled()
        assert "--allow-writes" in by_id(d, "write-note").text
        set_editor(d, "DROP POPULATION IF EXISTS like_sneaker")
        by_id(d, "run").click()
        wait_for(lambda: "W001" in by_id(d, "diagnostics").text, "the refusal")
        shoot(d, artifacts, "10-read-only")

        # a result of 100,000 rows stays responsive: virtual scrolling keeps few cells in the
        # page and fetches rows a page at a time
        set_editor(
            d,
            "SELECT s.* FROM samples s, samples t, (SELECT 1 FROM samples LIMIT 2) AS u"
            " LIMIT 100000",
        )
        by_id(d, "run").click()
        wait_for(lambda: status_rows(d) == 100_000, "100,000 rows")
        assert len(d.find_elements(By.CSS_SELECTOR, "#grid .cell")) < 400
        d.execute_script("const g = document.getElementById('grid'); g.scrollTop = g.scrollHeight;")
        wait_for(
            lambda: any(
                int(c.get_attribute("data-index")) >= 99_900
                for c in d.find_elements(By.CSS_SELECTOR, "#grid .cell")
            ),
            "the last page",
        )
        assert len(d.find_elements(By.CSS_SELECTOR, "#grid .cell")) < 400
        wait_for(lambda: len(loaded_cells(d)) > 10, "thumbnails at the end")
        shoot(d, artifacts, "11-scrolled-to-the-end")


def test_completion_from_the_live_catalog(
    world: dict[str, Any], browser: WebDriver, tmp_path: Path
) -> None:
    if not _completion_available():
        pytest.skip("the REPL's completion engine (popql.repl.completion) is not in this build")
    service = WebService(world["ds"], cache_dir=tmp_path / "cache")
    d = browser
    with ServerThread(create_app(service)) as server:
        d.get(server.url)
        wait_for(lambda: d.execute_script("return document.body.dataset.ready"), "the page")
        wait_for(
            lambda: d.find_elements(By.CSS_SELECTOR, "#editor-highlight .tok-kw"), "highlighting"
        )
        set_editor(d, "SELECT * FROM samples WHERE bright")
        area = by_id(d, "editor-input")
        area.send_keys(Keys.CONTROL, " ")
        item = wait_for(
            lambda: [
                li
                for li in d.find_elements(By.CSS_SELECTOR, "#completions li")
                if li.is_displayed() and "brightness" in li.text
            ],
            "completions",
        )
        assert item
        area.send_keys(Keys.TAB)
        assert editor_value(d) == "SELECT * FROM samples WHERE brightness"
        # PopQL's own keywords are highlighted apart
        set_editor(d, "SELECT * FROM samples WHERE image SIMILAR TO 'x' TOP 3")
        pq = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#editor-highlight .tok-pq")]
        assert "TOP" in pq


def test_token_url_opens_the_page(
    world: dict[str, Any], browser: WebDriver, tmp_path: Path
) -> None:
    """A server configured for a non-loopback address: the page opens only through the URL
    with the token (moved into a cookie), and then every request of the page is authorised."""
    service = WebService(world["ds"], cache_dir=tmp_path / "cache")
    app = create_app(service, host="0.0.0.0")
    d = browser
    d.delete_all_cookies()
    with ServerThread(app) as server:
        d.get(server.url + "api/info")
        assert "a token is required" in d.page_source
        d.get(f"{server.url}?token={app.state.token}")
        wait_for(lambda: d.execute_script("return document.body.dataset.ready"), "the page")
        assert "token" not in d.current_url
        set_editor(d, "SELECT * FROM samples LIMIT 30")
        by_id(d, "run").click()
        wait_for(lambda: status_rows(d) == 30, "the query")
        wait_for(lambda: len(loaded_cells(d)) >= 10, "thumbnails with the cookie")
    d.delete_all_cookies()
