"""Sizes a reader can hold: no source file over 400 lines, no class over 300 counting the
project's own bases and mixins it is assembled from."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "kubeml"
MAX_FILE_LINES, MAX_CLASS_LINES = 400, 300


def _classes() -> dict[str, tuple[int, list[str], Path]]:
    found: dict[str, tuple[int, list[str], Path]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                ]
                found[f"{path.relative_to(SRC)}:{node.name}"] = (
                    (node.end_lineno or node.lineno) - node.lineno + 1,
                    bases,
                    path,
                )
    return found


def test_no_source_file_is_over_400_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, long


def test_no_class_with_its_own_bases_is_over_300_lines():
    classes = _classes()
    by_name: dict[str, list[str]] = {}
    for key in classes:
        by_name.setdefault(key.split(":")[1], []).append(key)

    def size(key: str, seen: frozenset[str] = frozenset()) -> int:
        lines, bases, _ = classes[key]
        total = lines
        for base in bases:
            for base_key in by_name.get(base, []):  # a project class of that name
                if base_key not in seen:
                    total += size(base_key, seen | {key})
        return total

    large = {key: n for key in classes if (n := size(key)) > MAX_CLASS_LINES}
    assert not large, large
