"""How a round's change travels between a function and the parameter shards. No I/O.

`--sync-precision` picks the encoding of the float32 vectors a sharded round moves (a
function's change up, the new model's change down, the outer step's change to a
shard's replica):

- `fp32`: the values as they are (4 bytes an element).
- `bf16`: the top half of each float32, rounded to nearest even (2 bytes an element).
- `int8`: blocks of `INT8_BLOCK` elements, each a float32 scale (its largest magnitude
  / 127) and one signed byte per element, rounded to nearest (about 1.02 bytes an
  element).
- `int4`: blocks of `INT4_BLOCK` elements, each a float32 scale (its largest magnitude
  / 7) and a code in [-7, 7] per element, two to a byte, rounded to nearest (0.5625
  bytes an element).

Encoding is deterministic: the same vector gives the same bytes on any machine, and
`decode` of those bytes the same floats, so every holder of a decoded change (the
functions, a shard and its replica) adds the same bits. What the shards keep (the model
and the outer optimizer's state) stays float32 whatever travels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "int8", "int4")
INT8_BLOCK = 256  # elements per int8 scale
INT4_BLOCK = 64  # elements per int4 scale (an even number: two codes a byte)
QUANTISED = {"int8": (127, INT8_BLOCK), "int4": (7, INT4_BLOCK)}  # largest code, block


@dataclass(frozen=True)
class Encoded:
    """One float32 vector as it travels: `data` (float32, bfloat16 bits as int16, int8
    codes, or int4 codes two to a uint8) and, for int8 and int4, one float32 scale per
    block."""

    precision: str
    numel: int
    data: np.ndarray
    scales: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + (self.scales.nbytes if self.scales is not None else 0))


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"sync precision must be one of {PRECISIONS}, not {precision!r}")
    return precision


def encode(x: torch.Tensor, precision: str) -> Encoded:
    """`x` (a 1-D float32 tensor) in `precision`; fp32 copies it."""
    check_precision(precision)
    x = x.detach().reshape(-1).float()
    n = x.numel()
    if precision == "fp32":
        return Encoded(precision, n, x.numpy().copy())
    if precision == "bf16":
        return Encoded(precision, n, x.to(torch.bfloat16).view(torch.int16).numpy().copy())
    # Few passes over memory, no temporary the size of `x` but the quotient (a shard's
    # step encodes its change on the round's critical path): 6.9 -> 0.8 ms for 1.5M values.
    levels, block = QUANTISED[precision]
    rows = _blocks(x, block)
    scales = torch.maximum(rows.amax(dim=1), rows.amin(dim=1).neg_()).div_(float(levels))
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.div(rows, safe[:, None]).round_().clamp_(-levels, levels).to(torch.int8)
    if precision == "int8":
        return Encoded(precision, n, codes.reshape(-1)[:n].numpy(), scales.numpy())
    nibbles = codes.add_(8).to(torch.uint8)  # 1..15
    packed = nibbles[:, 0::2].bitwise_or(nibbles[:, 1::2].bitwise_left_shift(4))
    return Encoded(precision, n, packed.reshape(-1).numpy(), scales.numpy())


def _blocks(x: torch.Tensor, block: int = INT8_BLOCK) -> torch.Tensor:
    """`x` as rows of `block` values, the last one padded with zeros."""
    n = x.numel()
    blocks = -(-n // block)
    if n % block:
        padded = torch.zeros(blocks * block, dtype=x.dtype)
        padded[:n] = x
        x = padded
    return x.view(blocks, block)


def decode(encoded: Encoded, out: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 vector `encoded` holds, written into `out` if given."""
    with warnings.catch_warnings():
        # Arrays from Ray's object store are read-only; they are only read here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return _decode(encoded, out)


def _decode(encoded: Encoded, out: torch.Tensor | None) -> torch.Tensor:
    n = encoded.numel
    if out is None:
        out = torch.empty(n, dtype=torch.float32)
    if encoded.precision == "fp32":
        out.copy_(torch.from_numpy(np.asarray(encoded.data, dtype=np.float32)))
    elif encoded.precision == "bf16":
        bits = torch.from_numpy(np.asarray(encoded.data, dtype=np.int16))
        out.copy_(bits.view(torch.bfloat16))
    elif encoded.precision == "int8":
        assert encoded.scales is not None
        codes = torch.from_numpy(np.asarray(encoded.data, dtype=np.int8))
        scales = torch.from_numpy(np.asarray(encoded.scales, dtype=np.float32))
        if n % INT8_BLOCK == 0:  # straight into `out`
            out.view(-1, INT8_BLOCK).copy_(codes.view(-1, INT8_BLOCK)).mul_(scales[:, None])
        else:
            rows = _blocks(codes.float()).mul_(scales[:, None])
            out.copy_(rows.reshape(-1)[:n])
    else:
        assert encoded.scales is not None
        packed = torch.from_numpy(np.asarray(encoded.data, dtype=np.uint8))
        scales = torch.from_numpy(np.asarray(encoded.scales, dtype=np.float32))
        rows = torch.empty(len(scales), INT4_BLOCK, dtype=torch.float32)
        pairs = packed.view(len(scales), INT4_BLOCK // 2)
        rows[:, 0::2] = pairs.bitwise_and(15)
        rows[:, 1::2] = pairs.bitwise_right_shift(4)
        out.copy_(rows.sub_(8.0).mul_(scales[:, None]).reshape(-1)[:n])
    return out


def rounded(x: torch.Tensor, precision: str) -> torch.Tensor:
    """`x` as it arrives after travelling in `precision` (a new tensor; fp32: a copy)."""
    return decode(encode(x, precision))
