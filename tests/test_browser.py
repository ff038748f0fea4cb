"""The app in a real browser: a Streamlit server on a free port, driven by headless Chromium.

Like Streamlit's own e2e suite, the server is started as a subprocess, polled on
``/_stcore/health`` until it answers "ok", and elements are found by ``data-testid``.

The server must see the datasets this test process writes. FiftyOne's bundled database is
a ``mongod`` run by a "service" process that other FiftyOne processes of the same user
attach to, found by its command line only, not by ``FIFTYONE_DATABASE_DIR``. So instead of
trusting two processes to find the same service, the server is pointed with
``FIFTYONE_DATABASE_URI`` at the very ``mongod`` this process is connected to, and inherits
the session's own ``FIFTYONE_DATABASE_NAME`` (set in conftest.py).

Screenshots go to a temporary folder, or to ``artifacts/`` (or the folder named by
``CURATION_SCREENSHOTS``) when ``CURATION_SCREENSHOTS`` is set.
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[1]
DATASET = "test-embedded"
TAG = "browser-lasso"
STARTUP_TIMEOUT_S = 90
# The first map in a new server compiles UMAP with numba (~40 s on 2 cores).
MAP_TIMEOUT_MS = 240_000
PAGE_TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.is_file():
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need the `playwright` package (pip install playwright)")


# ---------------------------------------------------------------------------------------
# The server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _database_uri() -> str:
    """The MongoDB this test process uses, as a URI another process can connect to."""
    import fiftyone as fo
    import fiftyone.core.odm.database as fod

    if fo.config.database_uri:
        return fo.config.database_uri
    host, port = fod.get_db_client().address
    return f"mongodb://{host}:{port}"


class AppServer:
    """``streamlit run app.py`` in a subprocess; ``start`` returns once it is healthy."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.port = _free_port()
        self.log_path = self.log_dir / f"streamlit-{self.starts}.log"
        command = [
            sys.executable, "-m", "streamlit", "run", "app.py",
            "--server.port", str(self.port), "--server.headless", "true", "--server.address", "127.0.0.1",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as reply:
                    if reply.read().decode().strip() == "ok":
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"streamlit did not answer on {self.url}/_stcore/health in {STARTUP_TIMEOUT_S} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="module")
def server_env(embedded_dataset) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "FIFTYONE_DATABASE_URI": _database_uri(),
        "CURATION_DATASET": embedded_dataset.name,
        "CURATION_NO_DEMO": "1",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    })
    return env


@pytest.fixture(scope="module")
def app_server(server_env, tmp_path_factory):
    server = AppServer(server_env, tmp_path_factory.mktemp("streamlit"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------
# The browser


@pytest.fixture(scope="module")
def chromium():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1300})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory) -> Path:
    setting = os.environ.get("CURATION_SCREENSHOTS")
    if setting:
        target = ROOT / "artifacts" if setting.lower() in ("1", "true", "yes") else Path(setting)
        target.mkdir(parents=True, exist_ok=True)
    else:
        target = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {target}")
    return target


def _open(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")


def _page_text(page) -> str:
    main = page.locator('[data-testid="stMain"]')
    try:
        return main.inner_text(timeout=5_000) if main.count() else page.content()
    except sync_api.Error as error:
        return f"(cannot read the page: {error})"


def _wait_for(page, server: AppServer, what: str, wait) -> None:
    """Run ``wait()``; if it times out, fail with what the page and the server said."""
    try:
        wait()
    except sync_api.TimeoutError as error:
        raise AssertionError(f"{what} did not appear: {error}\n--- page ---\n{_page_text(page)[-3000:]}\n"
                             f"--- server log ---\n{server.log_tail()}") from None


def _overview_metrics(page, server: AppServer) -> dict[str, str]:
    """Open the overview; label -> shown value of each ``st.metric`` once all four are drawn."""
    _open(page, server.url)
    read = """() => Object.fromEntries(
        [...document.querySelectorAll('[data-testid="stMetric"]')].map(metric => [
            (metric.querySelector('[data-testid="stMetricLabel"]')?.innerText || '').trim(),
            (metric.querySelector('[data-testid="stMetricValue"]')?.innerText || '').trim(),
        ]))"""
    # Labels are markdown drawn after the metric box itself: wait until the first one reads "Samples".
    _wait_for(page, server, "the overview's metrics", lambda: page.wait_for_function(
        f"() => {{ const m = ({read})(); return Object.keys(m).length >= 4 && m['Samples']; }}"))
    return page.evaluate(read)


def _open_map(page, server: AppServer) -> None:
    """Open the map page and wait until its figure is drawn (the first map takes ~40 s)."""
    _open(page, f"{server.url}/map")
    _wait_for(page, server, "the map page's title",
              lambda: page.get_by_role("heading", name=f"Map · {DATASET}").wait_for())
    _wait_for(page, server, "the map", lambda: page.wait_for_function(
        "() => { const gd = document.querySelector('.js-plotly-plot');"
        " return gd && gd._fullLayout && gd._fullData && gd._fullData.length > 0; }",
        timeout=MAP_TIMEOUT_MS))


def _table_rows(page, server: AppServer, *, first_column: str) -> list[tuple[str, ...]]:
    """The rows of the ``st.dataframe`` whose first column is ``first_column``.

    The grid is drawn on a canvas; its cells are also kept in an accessible ``<table>``
    inside the canvas, which is what is read here (as Streamlit's own e2e tests do).
    """
    table = page.locator('[data-testid="stDataFrame"] table[role="grid"]').filter(
        has=page.locator('th[aria-colindex="1"]', has_text=re.compile(f"^{re.escape(first_column)}$")))
    _wait_for(page, server, f"the table of {first_column}s",
              lambda: table.locator('td[role="gridcell"]').first.wait_for(state="attached"))
    return [tuple(row) for row in table.locator("tbody tr").evaluate_all(
        "rows => rows.map(row => [...row.querySelectorAll('td')].map(cell => cell.textContent.trim()))")]


def _plotted_point_count(page) -> int:
    """Sum over the figure's traces of the number of x values, read from the page's figure."""
    return page.evaluate("""() => {
        const gd = document.querySelector('.js-plotly-plot');
        return gd.data.reduce((total, trace, index) => {
            const x = trace.x && trace.x.length !== undefined ? trace.x : gd._fullData[index].x;
            return total + x.length;
        }, 0);
    }""")


def _plotted_points(page) -> dict:
    """Every plotted point (its ``customdata``, position on the page in CSS pixels) and the plot area.

    On the Map page ``customdata`` is the point's row in the map's table, which follows the
    dataset's embedded samples (see :func:`_map_row_ids`)."""
    return page.evaluate("""() => {
        const gd = document.querySelector('.js-plotly-plot');
        const xaxis = gd._fullLayout.xaxis, yaxis = gd._fullLayout.yaxis;
        const box = gd.getBoundingClientRect();
        const points = [];
        for (const trace of gd._fullData) {
            for (let i = 0; i < trace.x.length; i++) {
                points.push({id: trace.customdata[i],
                             x: box.left + xaxis._offset + xaxis.d2p(trace.x[i]),
                             y: box.top + yaxis._offset + yaxis.d2p(trace.y[i])});
            }
        }
        return {points, plot: {left: box.left + xaxis._offset, top: box.top + yaxis._offset,
                               width: xaxis._length, height: yaxis._length}};
    }""")


def _inside(x: float, y: float, polygon: list[tuple[float, float]]) -> bool:
    """Ray casting: is (x, y) inside ``polygon``?"""
    inside = False
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _lasso_target(points: list[dict], plot: dict, *, margin: float = 6.0) -> tuple[list[tuple[float, float]], set[str]]:
    """A circular lasso around a few points with no point near its edge, inside the plot.

    Returns the polygon (page pixels) and the ``customdata`` of the points inside it.
    """
    # Keep clear of the plot's edges, and of the mode bar in the top-right corner.
    left, top = plot["left"] + margin, plot["top"] + 50
    right, bottom = plot["left"] + plot["width"] - 60, plot["top"] + plot["height"] - margin
    for radius in (40.0, 60.0, 80.0, 30.0, 100.0):
        for center in sorted(points, key=lambda point: (point["x"], point["y"])):
            cx, cy = center["x"], center["y"]
            if not (left + radius < cx < right - radius and top + radius < cy < bottom - radius):
                continue
            distances = [math.hypot(point["x"] - cx, point["y"] - cy) for point in points]
            if any(abs(distance - radius) < margin for distance in distances):
                continue
            polygon = [(cx + radius * math.cos(2 * math.pi * k / 32), cy + radius * math.sin(2 * math.pi * k / 32))
                       for k in range(32)]
            chosen = {point["id"] for point in points if _inside(point["x"], point["y"], polygon)}
            if 3 <= len(chosen) <= 20:
                return polygon, chosen
    raise AssertionError("no region of the map holds 3-20 points with none near the lasso's edge")


def _draw_lasso(page, polygon: list[tuple[float, float]]) -> None:
    page.mouse.move(*polygon[0])
    page.mouse.down()
    for x, y in polygon[1:] + polygon[:1]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()


# ---------------------------------------------------------------------------------------
# The tests


def test_server_environment_sees_the_test_dataset(server_env):
    """A second process with the server's environment lists the dataset this process made."""
    listing = subprocess.run(
        [sys.executable, "-c", "from curation.datasets import list_dataset_names; print(list_dataset_names())"],
        cwd=ROOT, env=server_env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert repr(DATASET) in listing.stdout


def test_overview_shows_the_dataset(app_server, page, embedded_dataset, screenshot_dir):
    from curation.datasets import embedding_statuses

    metrics = _overview_metrics(page, app_server)
    assert page.locator("h1").first.inner_text().strip() == f"Overview · {DATASET}"
    assert metrics["Samples"] == "60"
    assert metrics["Classes"] == "10"
    status = embedding_statuses(embedded_dataset)[0]
    assert metrics["Embedded"] == f"{status.embedded} / {status.total}"
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for()  # the class-count bar chart
    page.screenshot(path=str(screenshot_dir / "overview.png"), full_page=True)


def test_map_plots_every_embedded_sample(app_server, page, embedded_dataset, screenshot_dir):
    from curation.datasets import embedding_statuses

    _open_map(page, app_server)
    field = embedding_statuses(embedded_dataset)[0].field
    embedded = embedded_dataset.exists(field).count()
    assert embedded == 60
    assert _plotted_point_count(page) == embedded
    assert page.get_by_text(f"{embedded} samples. Drag to lasso-select").is_visible()
    page.screenshot(path=str(screenshot_dir / "map.png"), full_page=True)


@pytest.fixture
def clean_tag(embedded_dataset):
    from curation.datasets import load_dataset

    assert TAG not in load_dataset(DATASET).count_sample_tags()
    yield TAG
    load_dataset(DATASET).untag_samples(TAG)


def _map_row_ids(dataset) -> list[str]:
    """Sample id of each row of the Map page's table: the embedded samples in dataset order."""
    from curation.datasets import embedding_statuses

    return dataset.exists(embedding_statuses(dataset)[0].field).values("id")


def test_lasso_selection_is_tagged_and_survives_a_restart(app_server, page, clean_tag, screenshot_dir):
    from curation.datasets import load_dataset

    _open_map(page, app_server)
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    layout = _plotted_points(page)
    polygon, expected_rows = _lasso_target(layout["points"], layout["plot"])
    row_ids = _map_row_ids(load_dataset(DATASET))
    expected_ids = {row_ids[int(row)] for row in expected_rows}

    _draw_lasso(page, polygon)
    header = page.get_by_role("heading", name=re.compile(r"^Selection \([1-9][\d,]* samples\)$"))
    _wait_for(page, app_server, "the selection's header", header.wait_for)
    selected = int(re.search(r"\(([\d,]+) samples\)", header.inner_text()).group(1).replace(",", ""))
    assert selected == len(expected_ids)
    # The page has finished drawing the selection: the tag form and one thumbnail per sample.
    tag_input = page.get_by_label("Tag")
    _wait_for(page, app_server, "the tag form", tag_input.wait_for)
    assert tag_input.input_value() == "relabel"
    sync_api.expect(page.locator('[data-testid="stImage"]')).to_have_count(selected, timeout=PAGE_TIMEOUT_MS)
    page.screenshot(path=str(screenshot_dir / "map-selection.png"), full_page=True)

    tag_input.fill(clean_tag)
    page.get_by_role("button", name="Add tag").click()
    success = page.locator('[data-testid="stAlertContentSuccess"]')
    _wait_for(page, app_server, "the tagging's success message", success.wait_for)
    assert success.inner_text().strip() == f"Tagged {selected} samples with '{clean_tag}' (saved in the dataset)."

    dataset = load_dataset(DATASET)
    assert dataset.count_sample_tags().get(clean_tag) == selected
    assert set(dataset.match_tags(clean_tag).values("id")) == expected_ids

    # The tag is in the database, not in the server's memory: a new server shows it.
    app_server.restart()
    metrics = _overview_metrics(page, app_server)
    assert int(metrics["Tagged samples"].replace(",", "")) == sum(dataset.count_sample_tags().values()) >= selected
    assert (clean_tag, str(selected)) in _table_rows(page, app_server, first_column="tag")
    page.screenshot(path=str(screenshot_dir / "overview-tagged.png"), full_page=True)
