"""The callables ``spmv.py`` times, each made in a worker process of its own (``targets/runtime/worker.py``).

Every factory takes paths and numbers only (the worker gets them as JSON), loads what the parent
prepared, checks every copy's output against the numpy result saved beside it, and returns a
zero-argument callable that runs ``y = x @ W.T`` once per copy of the weight, in sequence. Only
numpy is imported here: each factory imports its one runtime, so a worker holds nothing else
(and no torch unless torch is what it times).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ALIGNMENT = 64
"""Bytes: TVM's own tensors start on 64-byte boundaries; ours do too, so the kernels see the
layout they were built for."""
RTOL = 1e-4
"""Allowed max error, relative to the largest expected output (as in the parent's check)."""


def aligned(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` in memory of its own that starts on an ``ALIGNMENT``-byte boundary."""
    buffer = np.empty(array.nbytes + ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    out = buffer[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def load(path: str, copies: int) -> list[np.ndarray]:
    """The first ``copies`` entries of a stacked ``.npy`` file, each copied into its own memory."""
    stack = np.load(path, mmap_mode="r")
    return [aligned(stack[i]) for i in range(copies)]


def check(name: str, outputs: Sequence[np.ndarray], expected: str) -> None:
    """Raise unless each output matches its copy's numpy result in ``expected`` (a stacked ``.npy``)."""
    wanted = np.load(expected, mmap_mode="r")
    for i, output in enumerate(outputs):
        scale = float(np.abs(wanted[i]).max()) or 1.0
        error = float(np.abs(np.asarray(output) - wanted[i]).max())
        if error > RTOL * scale:
            raise RuntimeError(f"{name} is wrong on copy {i}: max error {error:.3g} > {RTOL * scale:.3g}")


def ort_timer(model: str, x: str, expected: str, threads: int) -> Callable[[], object]:
    """ONNX Runtime on ``model`` (one MatMul per copy, each with its own initializer)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = {"x": np.load(x)}
    check("ORT dense", session.run(None, feed), expected)
    return lambda: session.run(None, feed)


def torch_timer(
    weights: str, x: str, expected: str, copies: int, sparse: bool, threads: int
) -> Callable[[], object]:
    """torch over the first ``copies`` weights: ``F.linear`` each, or (``sparse``) each as CSR
    through ``torch.sparse.mm``."""
    import torch

    torch.set_num_threads(threads)
    activations = torch.from_numpy(np.load(x))
    dense = [torch.from_numpy(w) for w in load(weights, copies)]
    if sparse:
        matrices, columns = [w.to_sparse_csr() for w in dense], activations.T.contiguous()

        def one(w: Any) -> Any:
            return torch.sparse.mm(w, columns)
    else:
        matrices = dense

        def one(w: Any) -> Any:
            return torch.nn.functional.linear(activations, w)

    def run() -> list[Any]:
        with torch.inference_mode():
            return [one(w) for w in matrices]

    outputs = [y.numpy().T if sparse else y.numpy() for y in run()]
    check("torch CSR" if sparse else "torch dense", outputs, expected)
    return run


def tvm_timer(
    libs: str, library: str, arrays: list[str], x: str, expected: str, copies: int
) -> Callable[[], object]:
    """Our kernel, compiled once into ``library``, called on each copy's packed ``arrays`` (one
    stacked ``.npy`` per kernel argument after ``x``). Only ``tvm_ffi`` and the TVM runtime of
    ``libs`` (the tvm package's ``lib`` folder) are loaded: no TVM compiler, as on a device."""
    import tvm_ffi  # first: the runtime library links against the libtvm_ffi.so this loads

    ctypes.CDLL(str(Path(libs) / "libtvm_runtime.so"), ctypes.RTLD_GLOBAL)
    kernel = tvm_ffi.load_module(library)["main"]
    inputs = tvm_ffi.from_dlpack(aligned(np.load(x)))
    stacks = [load(path, copies) for path in arrays]
    shape = np.load(expected, mmap_mode="r").shape[1:]
    outputs = [aligned(np.zeros(shape, np.float32)) for _ in range(copies)]
    calls = [
        [inputs, *(tvm_ffi.from_dlpack(stack[i]) for stack in stacks), tvm_ffi.from_dlpack(outputs[i])]
        for i in range(copies)
    ]

    def run() -> None:
        for call in calls:
            kernel(*call)

    run()
    check(Path(library).stem, outputs, expected)
    return run
