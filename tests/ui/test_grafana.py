"""deploy/grafana/kubeml.json reads only series that a real server exports after a task."""

from __future__ import annotations

import json
import re

import httpx

from kubeml.api.schemas import TaskState
from tests.ui.conftest import ROOT, Served

BOARD = ROOT / "deploy" / "grafana" / "kubeml.json"
PROMQL_WORDS = {"sum", "by", "rate", "increase", "label_values", "jobid", "type", "state"}


def _queries(board: dict) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def _samples(text: str) -> dict[str, list[str]]:
    """Metric name -> the label sets of its samples (comments skipped)."""
    found: dict[str, list[str]] = {}
    for match in re.finditer(r"^(\w+)(\{[^}]*\})? \S+$", text, re.M):
        found.setdefault(match[1], []).append(match[2] or "")
    return found


def test_the_board_has_the_2021_panels_and_more() -> None:
    board = json.loads(BOARD.read_text())
    titles = {p["title"] for p in board["panels"]}
    assert {"Running tasks", "Train loss", "Validation loss", "Accuracy", "Parallelism",
            "Epoch duration", "Samples/s", "Function failures"} <= titles  # fmt: skip
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_metric_the_board_queries_is_exported_after_a_task(served: Served) -> None:
    board = json.loads(BOARD.read_text())
    task_id = served.train(epochs=2)
    assert served.client.wait(task_id, timeout_s=120, poll_s=0.2).state is TaskState.SUCCEEDED
    served.client.infer(task_id, [[[0] * 8] * 8])
    text = httpx.get(f"{served.url}/metrics", timeout=10, trust_env=False).text
    exported = _samples(text)

    named: set[str] = set()
    for expr in _queries(board):
        words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", re.sub(r'"[^"]*"|\$\w+', "", expr)))
        metrics = {w for w in words if w.startswith("kubeml_")}
        assert metrics, f"no kubeml metric in {expr!r}"
        assert words - metrics <= PROMQL_WORDS, f"unexpected names in {expr!r}"
        named |= metrics
    missing = named - exported.keys()
    assert not missing, f"the board queries {sorted(missing)}, which /metrics does not export"

    per_task = named - {"kubeml_job_running_total"}
    for name in per_task:  # the finished task's last values are still there for the scrape
        assert any(f'jobid="{task_id}"' in labels for labels in exported[name]), name
    assert sorted(exported["kubeml_job_running_total"]) == ['{type="inference"}', '{type="train"}']
    assert f'kubeml_job_function_failures_total{{jobid="{task_id}"}} 0.0' in text
