"""`KubeDataset`: a torch dataset whose `data` and `labels` hold only this function's samples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

if TYPE_CHECKING:
    import numpy as np


class KubeDataset(Dataset):
    """Base class of the user's dataset.

    Subclasses call `super().__init__("name")` with the name the dataset was uploaded
    under and implement `__getitem__` and `__len__` over `self.data` and `self.labels`.
    kubeml fills those two numpy arrays with the samples assigned to this invocation when
    the model starts: the function's shard of the training set while training, its slice
    of the test set while validating. Users never load data themselves.

    Set the class attribute `batched_getitem = False` if `__getitem__` must only ever see
    one integer index. By default kubeml tries calling it once with an array of indices
    and uses that batched path only if it gives exactly what per-sample calls give.
    """

    batched_getitem: bool | None = None

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self._data: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._training = True

    @property
    def name(self) -> str:
        return self.dataset

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            raise self._not_loaded()
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            raise self._not_loaded()
        return self._labels

    @labels.setter
    def labels(self, value: np.ndarray) -> None:
        self._labels = value

    def is_training(self) -> bool:
        """True while training, False while validating."""
        return self._training

    def load_shard(self, data: np.ndarray, labels: np.ndarray, *, training: bool) -> None:
        """Called by kubeml when the model starts: this invocation's samples."""
        self._data, self._labels, self._training = data, labels, training

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Any) -> Any:
        raise NotImplementedError("KubeDataset subclasses implement __getitem__")

    def _not_loaded(self) -> RuntimeError:
        return RuntimeError(
            f"dataset {self.dataset!r}: kubeml fills data and labels when the model starts "
            "(inside `model.start()` of a kubeml invocation); do not read them before"
        )
