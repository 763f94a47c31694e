"""Property-based tests of the dataset checks: generated datasets, some broken, as files.

A valid dataset is generated, then up to two mutations break it (NaN or inf injected,
labels made 2-D or negative, a 0-d, empty, object or complex array, lengths or sample
shapes that disagree, bytes that are not numpy, a truncated file). An oracle written
here, independent of the store's code, says which files are wrong; the store must accept
exactly the datasets the oracle accepts and, when it refuses, name one of the wrong files.
Files arrive as .npy or .npz, cut into random chunks, as the streamed upload writes them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeml.control.edge.app import create_app
from kubeml.control.tasks.engine import Engine
from kubeml.errors import InvalidDatasetError
from kubeml.settings import Settings
from kubeml.stores.datasets import LocalDatasetStore

FIELDS = ("train_x", "train_y", "test_x", "test_y")
Files = dict[str, tuple[str, bytes]]  # field -> (filename, content)
FUZZ = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


def _npz(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, array)
    return buffer.getvalue()


# -- the oracle: which fields are wrong --------------------------------------------------------
def wrong_fields(arrays: dict[str, Any]) -> set[str]:
    wrong = {field for field, array in arrays.items() if not isinstance(array, np.ndarray)}
    for field, a in arrays.items():
        if field in wrong:
            continue
        label = field.endswith("_y")
        if (
            a.dtype.kind not in "biuf"
            or a.ndim == 0
            or len(a) == 0
            or (label and a.ndim != 1)
            or math.prod(a.shape[1:]) == 0
            or (a.dtype.kind == "f" and not np.isfinite(a).all())
            or (label and a.dtype.kind == "i" and (a < 0).any())
        ):
            wrong.add(field)
    good = {f: a for f, a in arrays.items() if f not in wrong}
    for split in ("train", "test"):
        x, y = good.get(f"{split}_x"), good.get(f"{split}_y")
        if x is not None and y is not None and len(x) != len(y):
            wrong |= {f"{split}_x", f"{split}_y"}
    if (
        "train_x" in good
        and "test_x" in good
        and good["train_x"].shape[1:] != good["test_x"].shape[1:]
    ):
        wrong |= {"train_x", "test_x"}
    if "train_y" in good and "test_y" in good:
        kinds = {"f" if good[f].dtype.kind == "f" else "class" for f in ("train_y", "test_y")}
        if len(kinds) == 2:
            wrong |= {"train_y", "test_y"}
    return wrong


# -- generated datasets ------------------------------------------------------------------------
def _set(field: str, make: Callable[[np.ndarray], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(arrays: dict[str, Any]) -> None:
        value = make(arrays[field])
        # numpy turns arithmetic on a 0-d array into a scalar; it is still saved as a 0-d array
        arrays[field] = np.asarray(value) if isinstance(value, np.generic) else value

    return apply


def _poke(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def make(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a.reshape(-1)[len(a.reshape(-1)) // 2] = value
        return a

    return make


MUTATIONS: dict[str, Callable[[str], Callable[[dict[str, Any]], None]]] = {
    "nan": lambda f: _set(f, _poke(float("nan"))),
    "inf": lambda f: _set(f, _poke(float("-inf"))),
    "negative": lambda f: _set(f, lambda a: a.astype(np.int64) - 3),
    "two-d": lambda f: _set(f, lambda a: np.stack([a, a], axis=1)),
    "zero-d": lambda f: _set(f, lambda a: np.array(a.reshape(-1)[0])),
    "empty": lambda f: _set(f, lambda a: a[:0]),
    "shorter": lambda f: _set(f, lambda a: a[:-1]),
    "objects": lambda f: _set(f, lambda a: np.array([None] * len(a), dtype=object)),
    "complex": lambda f: _set(f, lambda a: a.astype(np.complex64)),
    "floats": lambda f: _set(f, lambda a: a.astype(np.float64) + 0.5),
    "wider": lambda f: _set(f, lambda a: np.concatenate([a, a], axis=-1)),
    "no features": lambda f: _set(f, lambda a: np.zeros((len(a), 0), np.float32)),
    "not numpy": lambda f: _set(f, lambda a: b"id,label\n1,2\n"),
    "truncated": lambda f: _set(f, lambda a: _npy(a)[:-3]),
}


@st.composite
def datasets(draw: st.DrawFn) -> dict[str, Any]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sample = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.uint8, np.int16, np.bool_]))
    label_dtype = draw(st.sampled_from([np.int64, np.uint8, np.int32, np.float32]))
    arrays: dict[str, Any] = {}
    for split, n in (("train", draw(st.integers(1, 6))), ("test", draw(st.integers(1, 4)))):
        arrays[f"{split}_x"] = (rng.random((n, *sample)) * 4).astype(dtype)
        arrays[f"{split}_y"] = rng.integers(0, 3, n).astype(label_dtype)
    for _ in range(draw(st.integers(0, 2))):
        mutation = draw(st.sampled_from(sorted(MUTATIONS)))
        field = draw(st.sampled_from(FIELDS))
        if isinstance(arrays[field], np.ndarray):
            before = dict(arrays)
            try:
                MUTATIONS[mutation](field)(arrays)
            except (ValueError, TypeError, IndexError):  # e.g. stacking a 0-d array
                arrays = before
    return arrays


def as_files(arrays: dict[str, Any], formats: list[str]) -> Files:
    files: Files = {}
    for field, fmt in zip(FIELDS, formats, strict=True):
        value = arrays[field]
        if isinstance(value, bytes):
            files[field] = (f"{field}.npy", value)
        elif fmt == "npz" and not value.dtype.hasobject:
            files[field] = (f"{field}.npz", _npz(value))
        else:
            files[field] = (f"{field}.npy", _npy(value))
    return files


def oracle(arrays: dict[str, Any]) -> set[str]:
    loadable = {f: a for f, a in arrays.items() if isinstance(a, np.ndarray)}
    return wrong_fields(loadable) | {f for f, a in arrays.items() if isinstance(a, bytes)}


FORMATS = st.lists(st.sampled_from(["npy", "npz"]), min_size=4, max_size=4)


# -- the store, fed in chunks as the streamed upload feeds it ----------------------------------
@FUZZ
@given(arrays=datasets(), formats=FORMATS, chunk=st.integers(1, 300))
def test_the_store_accepts_exactly_the_datasets_that_can_train(
    tmp_path_factory: pytest.TempPathFactory, arrays: dict[str, Any], formats: list[str], chunk: int
) -> None:
    store = LocalDatasetStore(tmp_path_factory.mktemp("store"))
    wrong = oracle(arrays)
    staged = store.stage()
    refusal: InvalidDatasetError | None = None
    try:
        for field, (filename, content) in as_files(arrays, formats).items():
            staged.begin_file(field, filename)
            for start in range(0, len(content), chunk):
                staged.write(content[start : start + chunk])
            staged.end_file()
        info = staged.publish("d")
    except InvalidDatasetError as exc:
        refusal = exc
    finally:
        staged.discard()
    if refusal is not None:
        assert wrong, f"refused a valid dataset: {refusal}"
        assert any(field in refusal.message for field in wrong), (refusal.message, wrong)
        assert store.list() == [] and list(store.root.iterdir()) == []
        return
    assert not wrong, f"accepted a dataset with bad {sorted(wrong)}"
    assert (info.train_size, info.test_size) == (len(arrays["train_x"]), len(arrays["test_x"]))
    x, y = store.read("d", "train", [(0, info.train_size)])
    np.testing.assert_array_equal(x, arrays["train_x"])
    np.testing.assert_array_equal(y, arrays["train_y"])


# -- the same through the HTTP upload route -----------------------------------------------------
@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("upload-fuzz")
    engine = Engine(Settings(home=root / "home", backend="inline", capacity=1, shm_dir=root / "s"))
    try:
        yield TestClient(create_app(engine, engine.settings))
    finally:
        engine.close()


@FUZZ
@given(arrays=datasets(), formats=FORMATS)
def test_uploads_are_refused_with_a_4xx_naming_a_wrong_file(
    http: TestClient, arrays: dict[str, Any], formats: list[str]
) -> None:
    wrong = oracle(arrays)
    files = {f: (name, content, "application/octet-stream")
             for f, (name, content) in as_files(arrays, formats).items()}  # fmt: skip
    response = http.post("/datasets", data={"name": "fuzzed"}, files=files)
    if not wrong:
        assert response.status_code == 201, response.text
        assert http.delete("/datasets/fuzzed").status_code == 204
    else:
        assert response.status_code == 422, response.text
        message = response.json()["error"]["message"]
        assert any(field in message for field in wrong), (message, wrong)
    assert http.get("/datasets").json() == []
    assert http.get("/health").json()["damaged_records"] == []


def test_staging_leaves_nothing_behind(http: TestClient, tmp_path: Path) -> None:
    home = Path(http.app.state.engine.settings.home)  # type: ignore[attr-defined]
    assert [p.name for p in (home / "datasets").iterdir()] == []
