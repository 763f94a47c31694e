"""Request and response shapes of the dataset endpoints: what a stored or registered
dataset holds, and where a registered one is read from."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, StrictStr

from kubeml.api.schemas import DatasetName

MAX_SOURCE_CHARS = 4096


class DatasetInfo(BaseModel):
    name: str
    train_size: int
    test_size: int
    feature_shape: list[int]
    feature_dtype: str
    label_dtype: str
    created_at: datetime
    # Where a registered dataset is read from (a shared directory or an fsspec URL);
    # None for one uploaded into the home.
    source: str | None = None


class DatasetSource(BaseModel):
    """`POST /datasets/register`: a dataset read where it is, never uploaded."""

    name: DatasetName
    url: StrictStr = Field(
        min_length=1,
        max_length=MAX_SOURCE_CHARS,
        description="a directory every node can read (an absolute path), or a URL that "
        "fsspec opens (s3://bucket/prefix with s3fs installed), holding train_x.npy, "
        "train_y.npy, test_x.npy and test_y.npy",
    )
