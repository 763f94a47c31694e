"""Function code has one home, the file per version; old homes' SQLite copies move there."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kubeml.control.records.functions import FunctionStore
from kubeml.control.records.metadata import MetadataStore
from kubeml.errors import AlreadyExistsError, InvalidFunctionError, NotFoundError
from kubeml.runtime.loader import code_sha256

V1 = "def main():\n    return 1\n"
V2 = "def main():\n    return 2\n"


@pytest.fixture
def store(tmp_path: Path):
    metadata = MetadataStore(tmp_path / "kubeml.db")
    yield FunctionStore(tmp_path / "functions", metadata), tmp_path
    metadata.close()


def test_every_version_is_one_file_and_sqlite_holds_no_code(store):
    functions, home = store
    first = functions.put("f", V1, update=False)
    second = functions.put("f", V2, update=True)
    assert (first.sha256, second.sha256) == (code_sha256(V1), code_sha256(V2))
    assert Path(functions.code("f", first.sha256).path).read_text() == V1
    assert Path(functions.code("f", second.sha256).path).read_text() == V2
    functions.delete("f")
    assert Path(functions.code("f", first.sha256).path).exists()  # finished tasks still infer
    columns = [
        r[1] for r in sqlite3.connect(home / "kubeml.db").execute("PRAGMA table_info(functions)")
    ]
    assert "code" not in columns


def test_bad_code_and_names_are_refused_before_anything_is_written(store):
    functions, home = store
    with pytest.raises(InvalidFunctionError, match="no top-level main"):
        functions.put("f", "x = 1\n", update=False)
    with pytest.raises(InvalidFunctionError, match="syntax error at line 1"):
        functions.put("f", "def main(:\n", update=False)
    with pytest.raises(NotFoundError, match="'f' not found; create it first"):
        functions.put("f", V1, update=True)
    functions.put("f", V1, update=False)
    with pytest.raises(AlreadyExistsError, match="'f' already exists"):
        functions.put("f", V2, update=False)
    assert [p.name for p in (home / "functions" / "f").iterdir()] == [f"{code_sha256(V1)}.py"]


def test_an_old_home_with_a_code_column_keeps_working(tmp_path: Path):
    db = sqlite3.connect(tmp_path / "kubeml.db")
    db.execute(
        "CREATE TABLE functions (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL, "
        "code TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    stamp = "2026-01-01T00:00:00+00:00"
    db.execute(
        "INSERT INTO functions VALUES (?, ?, ?, ?, ?)", ("old", code_sha256(V1), V1, stamp, stamp)
    )
    db.commit()
    db.close()

    metadata = MetadataStore(tmp_path / "kubeml.db")
    functions = FunctionStore(tmp_path / "functions", metadata)
    assert Path(functions.code("old", code_sha256(V1)).path).read_text() == V1
    assert metadata.legacy_code() == []  # moved to the file, blanked in SQLite
    functions.put("new", V2, update=False)  # inserts still fill the old NOT NULL column
    functions.put("old", V2, update=True)
    assert [f.name for f in functions.list()] == ["new", "old"]
    assert functions.get("old").sha256 == code_sha256(V2)
    metadata.close()
