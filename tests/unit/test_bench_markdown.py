"""The harness's Markdown tables: the defaults' ratio against the best peer that arrived."""

from benchmarks.markdown import workload_markdown


def _row(key: str, framework: str, times: list[float | None]) -> dict:
    arrived = sorted(t for t in times if t is not None)
    median = arrived[len(times) // 2] if len(arrived) > len(times) // 2 else None
    return {
        "key": key,
        "framework": framework,
        "median_user_time_to_goal_s": median,
        "median_time_to_goal_s": median,
        "median_goal_epoch": 3 if median else None,
        "median_samples_per_s": 1000.0,
        "skipped": None,
        "per_seed": [
            {"seed": s, "user_time_to_goal_s": t, "goal_epoch": 3 if t else None, "skipped": None}
            for s, t in enumerate(times)
        ],
    }


def test_the_defaults_ratio_uses_the_fastest_peer_and_a_miss_is_said():
    entry = {
        "workload": {"goal_accuracy": 87.0},
        "rows": [
            _row("pytorch", "pytorch", [10.0, 12.0, 11.0]),
            _row("ddp", "ddp", [None, None, 9.0]),  # median missed: slower than any arrival
            _row("kubeml-defaults", "kubeml", [9.0, 8.0, 8.5]),
            _row("kubeml:k=4", "kubeml", [None, None, None]),
        ],
    }
    text = workload_markdown("fashion", entry)
    assert "kubeml-defaults ÷ pytorch: **0.77**" in text  # 8.5 / 11.0
    assert "| `ddp` | - | - | - | 1,000 | miss | miss | 9.0 (3) |" in text
    assert "to 87% s" in text and text.count("\n| `") == 4
