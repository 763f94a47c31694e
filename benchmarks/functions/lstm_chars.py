"""A character-level LSTM: the next character of Python source, not image classification.

After the char-rnn recipe (an LSTM of 128 units over a character embedding, RMSprop at
lr 2e-3, batches of 50), cut to fit two CPU cores: one layer, a context of 32 characters,
and one prediction per sample (the character after the context), scored as next-character
accuracy in percent. No gradient clipping: every row of the harness runs the same plain
step. Characters are classes 0-96 (`encode`, the harness's too), stored as uint8.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import RMSprop

from kubeml import KubeDataset, KubeModel

VOCAB, EMBEDDING, HIDDEN, CONTEXT = 97, 32, 128, 32


def encode(text: str) -> np.ndarray:
    """Characters to classes: 1-95 printable ASCII (32-126), 96 newline, 0 anything else."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    out = np.where((codes >= 32) & (codes <= 126), codes - 31, 0)
    return np.where(codes == 10, VOCAB - 1, out).astype(np.uint8)


def decode(classes) -> str:
    """Classes back to characters ("?" for class 0)."""
    chars = [chr(c + 31) if 1 <= c <= 95 else "\n" if c == VOCAB - 1 else "?" for c in classes]
    return "".join(chars)


class CharLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBEDDING)
        self.lstm = nn.LSTM(EMBEDDING, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, x):
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


class SourceText(KubeDataset):
    def __init__(self):
        super().__init__("stdlib-chars")

    def __getitem__(self, index):
        return self.data[index].astype("int64"), self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class KubeCharLSTM(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset)

    def configure_optimizers(self):
        return RMSprop(self.parameters(), lr=self.lr)

    def init(self, model):
        pass  # PyTorch's default initialisation

    def train(self, x, y, batch_index) -> float:
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def validate(self, x, y, batch_index):
        output = self(x)
        accuracy = (output.argmax(1) == y).float().mean().item() * 100
        return accuracy, F.cross_entropy(output, y).item()

    def infer(self, data):
        """`data`: strings; the next character predicted for each (from its last 32)."""
        x = np.zeros((len(data), CONTEXT), dtype=np.int64)
        for row, text in enumerate(data):
            codes = encode(text)[-CONTEXT:]
            x[row, CONTEXT - len(codes) :] = codes
        return list(decode(self(torch.from_numpy(x)).argmax(1).tolist()))


def main():
    return KubeCharLSTM(CharLSTM(), SourceText()).start()
