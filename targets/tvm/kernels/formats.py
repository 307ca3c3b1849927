"""Storage formats of a constant weight ``W`` (N x K) for the matmul kernels: dense, CSR and BSR.

Packed layout ("chunked BSR"): each block row stores its nonzero blocks padded to a multiple of
``unroll`` (zero blocks pointing at column 0), so the kernel has no remainder loop; ``indptr``
counts chunks. A block's index is its first column, and a last block that would run past K is
shifted left with the columns it repeats zeroed, so any K >= C works. Column indices are
uint16 when K <= 65535 (6 bytes per fp32 nonzero instead of 8), values fp32 or fp16 (accumulated
in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Format:
    """How a weight is stored and multiplied. ``kind`` is ``dense``, ``gemm`` (dense, stored
    transposed by panels for the register-blocked GEMM, batch > 1) or ``bsr`` (``csr`` = 1x1 blocks)."""

    kind: str
    block: tuple[int, int] = (1, 1)
    unroll: int = 8
    dtype: str = "float32"
    batch_block: int = 1
    parallel: bool = True
    batch_inner: bool = False  # sparse, batch > 1: loop over the batch innermost (x transposed)
    threads: int = 0  # GPU formats: lanes per (block) row (``gpu_kernel``); 0 for the CPU kernels

    @property
    def name(self) -> str:
        r, c = self.block
        if self.kind == "gemm":
            return "gemm" + ("" if self.parallel else "-serial")
        base = "dense" if self.kind == "dense" else "csr" if (r, c) == (1, 1) else f"bsr{r}x{c}"
        suffix = f"-u{self.unroll}" + (f"-b{self.batch_block}" if self.batch_block > 1 else "")
        suffix += "-bt" if self.batch_inner else ""
        suffix += f"-t{self.threads}" if self.threads else ""
        suffix += ("-fp16" if self.dtype == "float16" else "") + ("" if self.parallel else "-serial")
        return base + suffix

    @property
    def sparse(self) -> bool:
        return self.kind not in ("dense", "gemm")


@dataclass
class Packed:
    """A weight in a format: the arrays the kernel takes after ``x``, in order."""

    format: Format
    shape: tuple[int, int]
    arrays: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def index_dtype(k: int) -> str:
    return "uint16" if k <= 65535 else "int32"


def block_fill(weight: np.ndarray, block: tuple[int, int]) -> float:
    """Nonzeros of ``weight`` / values stored by ``block``-sparse storage (1.0 = no explicit zeros)."""
    nnz = int(np.count_nonzero(weight))
    if nnz == 0:
        return 1.0
    return nnz / (_block_mask(weight, block).sum() * block[0] * block[1])


def _blocks(weight: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The (NR, Q, R, C) blocks of ``weight`` and each block's first column (Q,)."""
    n, k = weight.shape
    r, c = block
    if k < c:
        raise ValueError(f"a {r}x{c} block needs at least {c} columns, the weight has {k}")
    nr, q = -(-n // r), -(-k // c)
    padded = np.zeros((nr * r, q * c), weight.dtype)
    padded[:n, :k] = weight
    blocks = padded.reshape(nr, r, q, c).transpose(0, 2, 1, 3).copy()
    starts = np.arange(q) * c
    if k % c:  # shift the last block left so it ends at column k; zero the columns it repeats
        last = k - c
        repeat = starts[-1] - last
        blocks[:, -1] = 0
        blocks[:, -1, :, repeat:] = padded[:, starts[-1] : k].reshape(nr, r, c - repeat)
        starts[-1] = last
    return blocks, starts


def _block_mask(weight: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    blocks, _ = _blocks(weight, block)
    return np.any(blocks != 0, axis=(2, 3))


def pack(weight: np.ndarray, fmt: Format) -> Packed:
    """Store ``weight`` (N x K, float32) in ``fmt``."""
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    if fmt.kind == "dense":
        return Packed(fmt, weight.shape, [weight.astype(fmt.dtype)])
    if fmt.kind == "gemm":
        return Packed(fmt, weight.shape, [panels(weight.T, GEMM_PANEL)])
    r, c = fmt.block
    u = fmt.unroll
    blocks, starts = _blocks(weight, fmt.block)
    nr = blocks.shape[0]
    mask = np.any(blocks != 0, axis=(2, 3))
    counts = mask.sum(axis=1)
    chunks = -(-counts // u)
    indptr = np.zeros(nr + 1, np.int32)
    indptr[1:] = np.cumsum(chunks)
    slots = max(int(indptr[-1]) * u, u)  # never an empty buffer
    rows, cols = np.nonzero(mask)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    slot = indptr[rows] * u + rank
    values = np.zeros((slots, r, c), fmt.dtype)
    values[slot] = blocks[rows, cols]
    indices = np.zeros(slots, index_dtype(weight.shape[1]))
    indices[slot] = starts[cols]
    return Packed(fmt, weight.shape, [values, indices, indptr])


GEMM_PANEL = 16
"""Columns of a weight's transpose per panel of the GEMM (``gemm_cpu``): two AVX2 vectors, four NEON
ones."""


def panels(b: np.ndarray, panel: int) -> np.ndarray:
    """``b`` (K x N) by panels of ``panel`` columns, as ``gemm_kernel(packed_b=True)`` reads it:
    panels x K x panel, each panel's rows contiguous, the columns past N zeros."""
    k, n = b.shape
    padded = np.zeros((k, -(-n // panel) * panel), np.float32)
    padded[:, :n] = b
    return np.ascontiguousarray(padded.reshape(k, -1, panel).transpose(1, 0, 2))


def unpack(packed: Packed) -> np.ndarray:
    """The dense float32 weight a packed one multiplies by (for tests)."""
    n, k = packed.shape
    if packed.format.kind == "dense":
        return packed.arrays[0].astype(np.float32)
    if packed.format.kind == "gemm":
        return packed.arrays[0].transpose(1, 0, 2).reshape(k, -1)[:, :n].T.copy()
    values, indices, indptr = packed.arrays
    r, c = packed.format.block
    used = int(indptr[-1]) * packed.format.unroll
    block_rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr) * packed.format.unroll)
    rows = block_rows[:, None, None] * r + np.arange(r)[None, :, None]
    cols = indices[:used].astype(np.int64)[:, None, None] + np.arange(c)[None, None, :]
    out = np.zeros((-(-n // r) * r, k), np.float32)
    np.add.at(out, (rows, cols), values[:used].astype(np.float32))
    return out[:n]


def sparse_layout(packed: Packed) -> tuple[int, int, int, int, int, int, int, str, str]:
    """The sizes and dtypes a block-sparse kernel is specialised on: N, K, the block's R and C,
    the unroll, block rows, stored blocks (slots), and the value and index dtypes."""
    n, k = packed.shape
    values, indices, indptr = packed.arrays
    r, c = packed.format.block
    nr, slots = len(indptr) - 1, values.shape[0]
    return n, k, r, c, packed.format.unroll, nr, slots, str(values.dtype), str(indices.dtype)
