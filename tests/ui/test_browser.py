"""/dashboard in a real headless browser (Debian's chromium) while a task trains."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeml.api.schemas import TaskState
from tests.ui.conftest import Served

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
        reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)",
    ),
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1400,1800",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def _points(driver: Any) -> dict[str, int]:
    return dict(driver.execute_script("return window.kubemlDashboard.points") or {})


def _wait(condition: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_charts_fill_while_a_task_trains(
    served: Served, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    task_id = served.train("slow", epochs=8, k=2)  # long enough to catch it running
    browser.get(f"{served.url}/dashboard#task={task_id}")
    _wait(lambda: served.client.get_task(task_id).state is TaskState.RUNNING, what="running")

    row = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-task="{task_id}"]'),
                what="the task's row")  # fmt: skip
    assert "running" in row[0].text or "queued" in row[0].text
    first = _wait(lambda: (p := _points(browser)).get("loss", 0) > 0 and p, what="a first point")
    later = _wait(lambda: (p := _points(browser))["loss"] > first["loss"] + 2 and p,
                  what="more points while it trains")  # fmt: skip
    assert served.client.get_task(task_id).state is TaskState.RUNNING  # grew without a reload
    _wait(lambda: served.client.get_task(task_id).epoch >= 2, what="a second epoch")
    assert later["parallelism"] > 0
    assert "round" in browser.find_element(By.ID, "detail-summary").text
    browser.save_screenshot(str(tmp_path / "running.png"))

    served.client.stop_task(task_id)  # the rest would only take time
    assert served.client.wait(task_id, timeout_s=120, poll_s=0.2).state is TaskState.STOPPED
    progress = served.client.progress(task_id)
    rounds, epochs = len(progress.rounds), len(progress.epochs)
    scored = sum(e.accuracy is not None for e in progress.epochs)
    want = {"loss": rounds + epochs + scored, "accuracy": scored,
            "parallelism": rounds + epochs}  # fmt: skip
    _wait(lambda: all(_points(browser).get(k) == v for k, v in want.items()),
          what=f"all of the task's points {want}, got {_points(browser)}")  # fmt: skip
    throughput = sum(p.samples_per_s is not None for p in progress.rounds) + epochs
    assert _points(browser)["throughput"] == throughput
    chart = browser.find_element(By.ID, "chart-loss")
    assert int(chart.get_attribute("data-points")) == want["loss"]
    assert chart.find_elements(By.CSS_SELECTOR, "canvas")  # uPlot drew it
    log = browser.find_element(By.ID, "log").text
    assert "task stopped on request" in log and "epoch 1: train loss" in log
    # The page reads the task's state before its log, so the log may show the stop one
    # poll before the state does.
    _wait(lambda: browser.find_element(By.ID, "stop").get_attribute("disabled") is not None,
          what="the stop button disabled")  # fmt: skip
    browser.save_screenshot(str(tmp_path / "finished.png"))
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_the_token_field_unlocks_a_guarded_server_and_its_docs(
    tmp_path: Path, digits: Any, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    from kubeml.client import stop_server
    from tests.ui.conftest import start_served

    guarded = start_served(tmp_path, digits, api_token="browser-s3cret")
    try:
        task_id = guarded.train(epochs=1)
        guarded.client.wait(task_id, timeout_s=60, poll_s=0.2)
        browser.get(f"{guarded.url}/dashboard")
        _wait(lambda: "API token" in browser.find_element(By.ID, "message").text,
              what="the ask for a token")  # fmt: skip
        browser.find_element(By.ID, "token").send_keys("browser-s3cret")
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-task="{task_id}"]'),
              what="the task table after the token")  # fmt: skip
        _wait(lambda: _points(browser).get("loss", 0) > 0, what="the chosen task's points")
        assert browser.find_element(By.ID, "message").text == ""
        assert browser.execute_script("return sessionStorage.getItem('kubeml-token')") == (
            "browser-s3cret"
        )

        # Stop and resume from the page, through the token.
        slow = guarded.train("slow", epochs=20, k=2)
        browser.get(f"{guarded.url}/dashboard#task={slow}")
        _wait(lambda: _points(browser).get("loss", 0) > 0, what="the slow task's points")
        browser.find_element(By.ID, "stop").click()
        stopped = guarded.client.wait(slow, timeout_s=60, poll_s=0.2)
        assert stopped.state is TaskState.STOPPED
        _wait(lambda: browser.find_element(By.ID, "resume").is_enabled(), what="Resume enabled")
        browser.find_element(By.ID, "resume").click()
        _wait(lambda: not guarded.client.get_task(slow).state.finished, what="the resume")
        guarded.client.stop_task(slow)
        guarded.client.wait(slow, timeout_s=60, poll_s=0.2)

        browser.get(f"{guarded.url}/docs")  # the same tab: the token carries over
        operations = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"),
                           what="Swagger UI's operations")  # fmt: skip
        assert any("/tasks/{task_id}/progress" in o.text for o in operations)
        browser.save_screenshot(str(tmp_path / "docs.png"))
    finally:
        guarded.client.close()
        stop_server(guarded.settings, timeout_s=30)
