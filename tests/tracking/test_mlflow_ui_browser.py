"""A real browser on the MLflow UI that `hpsearch ui` serves: the trials a user looks for are there.

Driven by Playwright for Python on Debian's system Chromium, not the DevTools protocol by hand:
`pip install playwright` installs from the package registry and drives the system `chromium`
through `executable_path` (checked here: Playwright 1.65 with Chromium 156), and its locators
wait on conditions (a role, a text, a count) with a timeout, which a hand-written CDP client
would have to reimplement. Only `playwright install` (browsers from Microsoft's CDN) is
unreachable here, and it is not needed.

Selectors are roles and texts a user sees (the "tiny" link, the "Model metrics" tab, the
"Search metric charts" box); the exceptions, each with its reason where it is used, are MLflow's
unlabelled expand button (found as the only button in the parent's row), its chart-card test id
and Plotly's own classes for the drawn points.

Chromium comes from apt (`.ci/run` installs it when missing). Without it, or without playwright,
the tests are skipped naming what is missing, except where HPSEARCH_REQUIRE_BROWSER=1 (set by
`.ci/run`): there a missing browser is a failure, so CI cannot pass by skipping them.

HPSEARCH_SCREENSHOTS=DIR also writes the screenshots to DIR (`docs/` holds the committed ones:
HPSEARCH_SCREENSHOTS=docs pytest tests/tracking/test_mlflow_ui_browser.py).
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_cli, stop_group, tiny_study

N_TRIALS = 2
EPOCHS = 3  # evaluated every epoch: the kNN chart has 3 steps
# Generous on a loaded 2-core machine: the first page load compiles MLflow's large JS bundle.
TIMEOUT_MS = 120_000


def _missing(what: str):
    if os.environ.get("HPSEARCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} (HPSEARCH_REQUIRE_BROWSER=1: the browser test must run here)", pytrace=False)
    pytest.skip(what)


try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the dev extra installs it; a bare `pip install -e .` does not
    sync_playwright = None


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if sync_playwright is None:
        _missing("playwright is not installed: pip install -e '.[dev]'")
    path = shutil.which("chromium")
    if path is None:
        _missing("no `chromium` on PATH: apt-get install -y chromium (.ci/run does it)")
    return path


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, chromium_path):
    """A finished 2-trial study whose trials report kNN every epoch; its workdir and experiment id."""
    home = tmp_path_factory.mktemp("ui-browser")
    cfg = tiny_study(home / "runs", n_trials=N_TRIALS, **{"training.epochs": EPOCHS, "evaluation.eval_every": 1})
    (home / "study.yaml").write_text(yaml.safe_dump(cfg))
    result = run_cli("run", "study.yaml", cwd=home)
    assert result.returncode == 0, result.stderr
    # The link the run prints is the one a user opens: take the experiment id from it.
    link = re.search(r"#/experiments/(\d+)/runs\?workflowType=machine_learning", result.stdout)
    assert link, result.stdout
    return home / "runs", link.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(finished_study):
    """`hpsearch ui` on the study's workdir, up and answering; its base URL. Stopped afterwards."""
    workdir, _ = finished_study
    port = _free_port()
    # Its own session, so that the whole server process group can be stopped at the end.
    server = subprocess.Popen([sys.executable, "-m", "hpsearch", "ui", "--workdir", str(workdir), "--port", str(port)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        # Importing mlflow and checking the store's schema takes ~10 s here, minutes when loaded.
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "the MLflow UI did not come up"
                time.sleep(0.5)
        yield base
    finally:
        stop_group(server)


@pytest.fixture(scope="module")
def browser(chromium_path):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    # MLflow 3.17 opens its "MLflow Assistant" side panel on a first visit, which would cover a
    # third of every screenshot; these are the keys it stores once a user has closed it. (Only the
    # pictures depend on them: no assertion looks at the panel.)
    context.add_init_script("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)  # expect() has its own default, 5 s
    page = context.new_page()
    yield page
    # What the browser showed last, for a failing run (pytest keeps the last tmp_paths).
    with contextlib.suppress(Exception):
        page.screenshot(path=tmp_path / "last.png")
        (tmp_path / "last.html").write_text(page.content())
    context.close()


def screenshot(page, tmp_path: Path, name: str) -> None:
    # Without the focus ring and hover icons the last click leaves on the table.
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.mouse.move(640, 790)
    page.screenshot(path=tmp_path / name)
    if os.environ.get("HPSEARCH_SCREENSHOTS"):
        target = Path(os.environ["HPSEARCH_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / name, target / name)


def rest(base: str, path: str, **query) -> dict:
    """GET one of the MLflow REST endpoints the UI itself calls."""
    with urllib.request.urlopen(f"{base}/ajax-api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.load(r)


def open_runs_table_expanded(page, base: str, experiment_id: str):
    """Open the experiment's runs table, expand the study's parent run; the grid and its trial links."""
    page.goto(f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    grid = page.get_by_role("grid")
    parent = grid.get_by_role("link", name="tiny", exact=True)  # the parent run is named after the study
    expect(parent).to_be_visible()
    trials = grid.get_by_role("link", name=re.compile(r"^trial-\d+$"))
    # Collapsed, the table shows only the parent: trials are its children, not top-level runs.
    expect(trials).to_have_count(0)
    expect(page.get_by_text(f"{1 + N_TRIALS} matching runs")).to_be_visible()
    # The expand toggle is an icon button without a label; it is the only button in the parent's row
    # (AG Grid renders a row once per pinned section: the one holding the name cell has it).
    toggle = grid.get_by_role("row").filter(has=page.get_by_role("link", name="tiny", exact=True)).get_by_role("button")
    expect(toggle).to_have_count(1)
    toggle.click()
    expect(trials).to_have_count(N_TRIALS)
    return grid, parent, trials


def test_runs_table_nests_one_run_per_trial_under_the_study(page, ui, finished_study, tmp_path):
    _, experiment_id = finished_study
    grid, parent, trials = open_runs_table_expanded(page, ui, experiment_id)

    # One nested run per trial, named by trial number.
    assert sorted(trials.all_inner_texts()) == [f"trial-{n}" for n in range(N_TRIALS)]
    # Shown as children: indented to the right of the parent's name.
    parent_x = parent.bounding_box()["x"]
    for n in range(N_TRIALS):
        assert trials.nth(n).bounding_box()["x"] > parent_x + 10, "trial rows are not indented under the parent"
    # And the UI nests what MLflow holds: each trial run's parent is the study's run.
    parent_id = parent.get_attribute("href").rsplit("/", 1)[-1]
    for n in range(N_TRIALS):
        run_id = trials.nth(n).get_attribute("href").rsplit("/", 1)[-1]
        tags = {t["key"]: t["value"] for t in rest(ui, "runs/get", run_id=run_id)["run"]["data"]["tags"]}
        assert tags.get("mlflow.parentRunId") == parent_id
    screenshot(page, tmp_path, "mlflow-runs.png")


def test_a_trial_run_charts_knn_accuracy_per_epoch(page, ui, finished_study, tmp_path):
    _, experiment_id = finished_study
    grid, _, _ = open_runs_table_expanded(page, ui, experiment_id)
    grid.get_by_role("link", name="trial-0", exact=True).click()
    expect(page.get_by_role("heading", name="trial-0", exact=True)).to_be_visible()
    run_id = re.search(r"/runs/([0-9a-f]+)", page.url).group(1)

    page.get_by_role("tab", name="Model metrics").click()
    # Narrow the run's charts to kNN, as a user would among its ~35 metrics.
    page.get_by_placeholder("Search metric charts").fill("knn_accuracy")
    # The chart card (MLflow's test id: the card has no role of its own), by its visible title.
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
        has=page.get_by_role("heading", name="knn_accuracy", exact=True))
    expect(card).to_have_count(1)
    expect(card.get_by_text("trial-0 (knn_accuracy)")).to_be_visible()  # the legend
    expect(card.get_by_text("Step", exact=True)).to_be_visible()  # the x axis
    plot = card.locator(".js-plotly-plot")
    expect(plot).to_be_visible()

    # What MLflow stores: one kNN value per epoch.
    history = sorted(rest(ui, "metrics/get-history", run_id=run_id, metric_key="knn_accuracy")["metrics"],
                     key=lambda m: m["step"])
    assert [m["step"] for m in history] == list(range(1, EPOCHS + 1))
    # What the chart draws: a marker per epoch (Plotly's `path.point`; MLflow plots lines+markers
    # at this few points), and the plotted series is that history, step for step.
    expect(plot.locator("g.points path.point")).to_have_count(EPOCHS)
    series = plot.evaluate("gd => gd.data.filter(t => (t.mode || '').includes('markers')).map(t => [t.x, t.y])")
    assert series == [[[m["step"] for m in history], [pytest.approx(m["value"]) for m in history]]]
    screenshot(page, tmp_path, "mlflow-knn-chart.png")
