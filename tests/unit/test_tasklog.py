"""Task logs: indices that never repeat, and a cap that keeps the head and the tail."""

from kubeml.control.records.tasklog import TaskLogs


def test_lines_are_read_back_in_order_from_an_index(tmp_path):
    logs = TaskLogs(tmp_path)
    for i in range(5):
        logs.append("t", "job", f"line {i}")
    assert [(x.index, x.message) for x in logs.read("t", since=3)] == [(3, "line 3"), (4, "line 4")]
    assert [x.message for x in logs.read("t", limit=2)] == ["line 0", "line 1"]


def test_a_capped_log_keeps_head_and_tail_and_says_how_much_was_dropped(tmp_path):
    logs = TaskLogs(tmp_path, max_lines=40)  # head 20, tail 10..20
    for i in range(100):
        logs.append("t", "function-0", f"line {i}")
    lines = logs.read("t")
    messages = [line.message for line in lines]
    assert messages[:20] == [f"line {i}" for i in range(20)]
    assert messages[-1] == "line 99"
    kept_tail = messages[21:]
    assert 10 <= len(kept_tail) <= 20
    first_kept = int(kept_tail[0].split()[1])
    assert messages[20] == (
        f"... {first_kept - 20} log line(s) dropped: a task log keeps its first 20 lines and "
        "its last 10 or more ..."
    )
    assert [line.index for line in lines if line.source == "function-0"][-1] == 99
    assert len(list(tmp_path.iterdir())) == 3  # head and two tail files, whatever was printed
    # A follower polling from an index sees each line once; a restarted server counts on.
    assert [line.message for line in logs.read("t", since=98)] == ["line 98", "line 99"]
    again = TaskLogs(tmp_path, max_lines=40)
    again.append("t", "job", "after restart")
    assert again.read("t", since=100)[0].index == 100
    again.delete("t")
    assert again.read("t") == [] and not list(tmp_path.iterdir())
