"""/dashboard's charts keep every axis label whole, for values from 0.001 to 1,000,000.

The page's API calls are answered in the browser with made-up tasks (no training), and
every string a chart draws on its canvas is recorded with its ink box, transformed to the
canvas's pixels: a label cut by the canvas's edge (the samples/s axis showed "0,000" for
10,000) has a box that leaves the canvas.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.ui.conftest import Served
from tests.ui.test_browser import _wait, browser  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # a browser; skipped without chromium (see test_browser)

CHARTS = ("loss", "accuracy", "parallelism", "throughput")
MAGNITUDES = [10.0**e for e in range(-3, 7)]  # 0.001 ... 1,000,000

# Installed before the page's own scripts: canned API answers and a record of drawn text.
_INSTRUMENT = """
window.__feed = {tasks: [], progress: {}};
const answer = (body) => new Response(JSON.stringify(body),
  {status: 200, headers: {"Content-Type": "application/json"}});
const realFetch = window.fetch.bind(window);
window.fetch = async (path, options) => {
  const route = new URL(path, location.href).pathname;
  if (route.endsWith("/tasks")) return answer(window.__feed.tasks);
  const progress = route.match(/\\/tasks\\/([^/]+)\\/progress$/);
  if (progress) return answer(window.__feed.progress[decodeURIComponent(progress[1])]);
  if (/\\/tasks\\/[^/]+\\/logs$/.test(route)) return answer([]);
  return realFetch(path, options);
};
const drawn = new Map();  // canvas -> the text of its last full drawing
window.__drawn = drawn;
const ctx2d = CanvasRenderingContext2D.prototype;
const clearRect = ctx2d.clearRect, fillText = ctx2d.fillText;
ctx2d.clearRect = function (x, y, w, h) {
  if (x <= 0 && y <= 0 && w >= this.canvas.width && h >= this.canvas.height) {
    drawn.set(this.canvas, []);
  }
  return clearRect.apply(this, arguments);
};
ctx2d.fillText = function (text, x, y) {
  const m = this.measureText(String(text)), t = this.getTransform();
  const xs = [x - m.actualBoundingBoxLeft, x + m.actualBoundingBoxRight];
  const ys = [y - m.actualBoundingBoxAscent, y + m.actualBoundingBoxDescent];
  const corners = xs.flatMap((px) => ys.map((py) =>
    [t.a * px + t.c * py + t.e, t.b * px + t.d * py + t.f]));
  if (!drawn.has(this.canvas)) drawn.set(this.canvas, []);
  drawn.get(this.canvas).push({
    text: String(text), align: this.textAlign,
    left: Math.min(...corners.map((c) => c[0])), right: Math.max(...corners.map((c) => c[0])),
    top: Math.min(...corners.map((c) => c[1])), bottom: Math.max(...corners.map((c) => c[1])),
  });
  return fillText.apply(this, arguments);
};
"""

_LABELS = """
const out = {};
for (const name of arguments[0]) {
  const canvas = document.querySelector("#chart-" + name + " canvas");
  out[name] = {width: canvas.width, height: canvas.height,
               labels: window.__drawn.get(canvas) || []};
}
return out;
"""


def _task(task_id: str, values: list[float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A finished 3-epoch task whose every chart plots `values` (rounds and epochs)."""
    stamp = "2026-01-01T00:00:00+00:00"
    info = {
        "id": task_id, "state": "succeeded", "epoch": 3, "round": 0, "parallelism": 2,
        "accuracy": values[-1], "train_loss": values[-1], "error": None,
        "created_at": stamp, "started_at": stamp, "finished_at": stamp,
        "request": {"function": "f", "dataset": "d", "epochs": 3, "k": 4,
                    "batch_size": 64, "lr": 0.01},
    }  # fmt: skip
    per_epoch = len(values) // 3
    rounds = [
        {"index": i, "epoch": i // per_epoch + 1, "round": i % per_epoch + 1, "train_loss": v,
         "parallelism": v, "samples": 64, "samples_per_s": v, "elapsed_s": float(i),
         "time": stamp}
        for i, v in enumerate(values)
    ]  # fmt: skip
    epochs = [
        {"epoch": e, "train_loss": v, "val_loss": v, "accuracy": v, "parallelism": v,
         "samples_per_s": v, "rounds": per_epoch, "epoch_duration_s": 1.0}
        for e, v in ((e, values[e * per_epoch - 1]) for e in (1, 2, 3))
    ]  # fmt: skip
    progress = {"task": info, "rounds_per_epoch": per_epoch, "samples_per_epoch": 640,
                "rounds": rounds, "epochs": epochs}  # fmt: skip
    return info, progress


def _scenarios() -> dict[str, list[float]]:
    """One task per magnitude (values just under it, where labels are longest), and one
    whose values span all of them."""
    tasks = {f"m{i}": [top * (0.3 + 0.7 * k / 11) for k in range(12)]
             for i, top in enumerate(MAGNITUDES)}  # fmt: skip
    tasks["span"] = [MAGNITUDES[k % len(MAGNITUDES)] for k in range(12)]
    return tasks


def test_every_axis_label_is_whole_for_values_from_a_thousandth_to_a_million(
    served: Served,
    browser: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    scenarios = _scenarios()
    feed = {"tasks": [], "progress": {}}
    for task_id, values in scenarios.items():
        info, progress = _task(task_id, values)
        feed["tasks"].append(info)
        feed["progress"][task_id] = progress
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _INSTRUMENT})
    first = next(iter(scenarios))
    browser.get(f"{served.url}/dashboard#task={first}")
    browser.execute_script(f"window.__feed = {json.dumps(feed)};")

    clipped: list[Any] = []
    y_ticks: dict[tuple[str, str], list[str]] = {}
    for task_id in scenarios:
        browser.execute_script(f"location.hash = '#task={task_id}';")
        _wait(lambda task_id=task_id: browser.execute_script(  # type: ignore[misc]
            "const s = window.kubemlDashboard; return s.task && s.task.id === arguments[0] "
            "&& Object.keys(s.charts).length === 4 && s.points.loss > 0", task_id),
            what=f"task {task_id} drawn")  # fmt: skip
        time.sleep(0.3)  # uPlot draws on its next animation frame
        for chart, canvas in browser.execute_script(_LABELS, list(CHARTS)).items():
            labels = canvas["labels"]
            assert labels, f"{task_id}: chart {chart} drew no text"
            # Bottom to top: the y axis's tick labels are the right-aligned ones.
            y_labels = sorted((label for label in labels if label["align"] == "right"),
                              key=lambda label: -label["top"])  # fmt: skip
            y_ticks[(task_id, chart)] = [label["text"] for label in y_labels]
            for label in labels:
                inside = (label["left"] >= -0.5 and label["top"] >= -0.5
                          and label["right"] <= canvas["width"] + 0.5
                          and label["bottom"] <= canvas["height"] + 0.5)  # fmt: skip
                if not inside:
                    clipped.append((task_id, chart, label, canvas["width"], canvas["height"]))
    assert not clipped, clipped[:10]
    # The y ticks read as distinct numbers rising up the axis, however small or large: a
    # label rounded to fewer decimals than its step needs repeats its neighbour's.
    for (task_id, chart), ticks in y_ticks.items():
        values = [_number(text) for text in ticks]
        assert values == sorted(set(values)) and len(values) >= 2, (task_id, chart, ticks)
    assert 1_000_000 in [_number(t) for t in y_ticks[("span", "throughput")]]
    assert 0.001 in [_number(t) for t in y_ticks[("m0", "throughput")]]


def _number(label: str) -> float:
    return float(label.replace(",", ""))  # the browser's locale: en-US, headless
