"""The TIR matmul kernels against numpy, on shapes and patterns chosen to break them."""

from __future__ import annotations

import numpy as np
import pytest

from targets.tvm import host_target, set_threads
from targets.tvm.kernels import Format, block_fill, gemm_kernel, gpu_kernel, kernel, pack, unpack

FORMATS = [
    Format("dense", unroll=1),
    Format("dense", unroll=2, batch_block=3),
    Format("dense", unroll=1, parallel=False),
    Format("gemm"),
    Format("gemm", parallel=False),
    Format("bsr", (1, 1), 4),
    Format("bsr", (1, 1), 8, parallel=False),
    Format("bsr", (1, 4), 4),
    Format("bsr", (4, 1), 4),
    Format("bsr", (4, 4), 2),
    Format("bsr", (8, 1), 2),
    Format("bsr", (1, 1), 8, dtype="float16"),
    Format("bsr", (4, 1), 4, dtype="float16"),
    Format("bsr", (1, 1), 2, batch_inner=True),
    Format("bsr", (4, 4), 1, batch_inner=True, dtype="float16"),
    Format("bsr", (1, 4), 1, batch_inner=True, parallel=False),
]


def weights() -> dict[str, np.ndarray]:
    """Odd shapes with empty rows, a fully dense row, a zero matrix, sizes off every block."""
    rng = np.random.default_rng(0)
    out = {}
    for n, k in [(13, 7), (5, 67), (33, 9), (9, 130), (150, 20)]:  # 150 rows: several per work item
        w = rng.standard_normal((n, k)).astype(np.float32)
        w[rng.random((n, k)) < 0.8] = 0
        w[1] = 0  # an empty row
        w[2] = rng.standard_normal(k)  # a fully dense row
        w[:, -1] = rng.standard_normal(n)  # the last column, which a shifted block repeats
        out[f"{n}x{k}"] = w
    out["zero"] = np.zeros((6, 10), np.float32)
    return out


WEIGHTS = weights()


def run(w: np.ndarray, fmt: Format, batch: int) -> tuple[np.ndarray, np.ndarray]:
    import tvm

    set_threads()
    packed = pack(w, fmt)
    lib = tvm.compile(tvm.IRModule({"main": kernel(packed, batch)}), target=tvm.target.Target(host_target()))
    x = np.random.default_rng(1).standard_normal((batch, w.shape[1])).astype(np.float32)
    dev = tvm.cpu()
    y = np.full((batch, w.shape[0]), np.nan, np.float32)
    args = [tvm.runtime.tensor(a, dev) for a in (x, *packed.arrays, y)]
    lib["main"](*args)
    expected = x.astype(np.float64) @ w.astype(fmt.dtype).astype(np.float64).T
    return args[-1].numpy(), expected


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_kernel_matches_numpy(fmt: Format) -> None:
    for name, w in WEIGHTS.items():
        if w.shape[1] < fmt.block[1]:
            continue
        for batch in (1, 3, 37) if fmt.batch_inner else (1, 3):  # 37: whole panels and a part
            got, expected = run(w, fmt, batch)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"{name}, batch {batch}")


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.sparse], ids=lambda f: f.name)
def test_pack_round_trips_and_stores_only_nonzero_blocks(fmt: Format) -> None:
    for w in WEIGHTS.values():
        if w.shape[1] < fmt.block[1]:
            continue
        packed = pack(w, fmt)
        np.testing.assert_array_equal(unpack(packed), w.astype(fmt.dtype).astype(np.float32))
        values, indices, indptr = packed.arrays
        assert indices.dtype == np.uint16 and indptr[-1] * fmt.unroll <= len(values)
        blocks = int(np.count_nonzero(np.any(values != 0, axis=(1, 2))))
        assert blocks <= -(-w.shape[0] // fmt.block[0]) * -(-w.shape[1] // fmt.block[1])


def test_wide_matrices_use_int32_indices() -> None:
    w = np.zeros((2, 70000), np.float32)
    w[0, 69999] = 1.0
    packed = pack(w, Format("bsr"))
    assert packed.arrays[1].dtype == np.int32 and packed.arrays[1].max() == 69999


def test_block_fill() -> None:
    w = np.zeros((8, 8), np.float32)
    w[0:4, 0] = 1.0  # one full 4x1 block
    assert block_fill(w, (4, 1)) == 1.0
    assert block_fill(w, (1, 4)) == 0.25


GPU_FORMATS = [
    Format("bsr", (1, 1), 4, threads=32),
    Format("bsr", (1, 1), 1, threads=4),
    Format("bsr", (1, 1), 4, threads=8, dtype="float16"),
    Format("bsr", (1, 1), 4, threads=16, batch_inner=True),
    Format("bsr", (4, 1), 4, threads=32),
    Format("bsr", (1, 4), 1, threads=8, batch_inner=True, dtype="float16"),
]


@pytest.mark.parametrize("fmt", GPU_FORMATS, ids=lambda f: f.name)
def test_gpu_kernel_arithmetic_matches_numpy(fmt: Format) -> None:
    """The CUDA kernel's TIR with its thread loops run serially on the CPU (no GPU here), the
    warp shuffles as the same tree of adds: rows longer than the lanes, shorter, empty."""
    import tvm

    for name, w in WEIGHTS.items():
        if w.shape[1] < fmt.block[1]:
            continue
        for batch in (1, 3):
            packed = pack(w, fmt)
            func = gpu_kernel(packed, batch, threads=False)
            lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(host_target()))
            x = np.random.default_rng(1).standard_normal((batch, w.shape[1])).astype(np.float32)
            y = np.full((batch, w.shape[0]), np.nan, np.float32)
            args = [tvm.runtime.tensor(a) for a in (x, *packed.arrays, y)]
            lib["main"](*args)
            expected = x.astype(np.float64) @ w.astype(fmt.dtype).astype(np.float64).T
            np.testing.assert_allclose(args[-1].numpy(), expected, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    "fmt, loads",
    [
        (Format("bsr", (1, 1), 4, threads=16, batch_inner=True), ("ushort4", "float4")),
        (Format("bsr", (4, 1), 4, threads=32, dtype="float16"), ("ushort4", "uint4")),  # 8 halves
        (Format("bsr", (1, 4), 1, threads=8), ("float4",)),
    ],
    ids=lambda v: v.name if isinstance(v, Format) else "",
)
def test_gpu_kernel_cuda_source_has_vector_loads_and_shuffles(fmt: Format, loads: tuple[str, ...]) -> None:
    """The CUDA C TVM generates (no GPU needed): vector loads of the chunks, warp shuffles over
    the row's lanes, thread blocks of 128 threads, a grid row per batch row unless batch-inner."""
    import tvm

    packed = pack(WEIGHTS["150x20"], fmt)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80", "host": host_target()})
    lib = tvm.compile(tvm.IRModule({"main": gpu_kernel(packed, 4)}), target=target)
    (cuda,) = [m for m in lib.mod.imports if m.kind == "cuda"]
    source = cuda.inspect_source()
    for vector in loads:
        assert f"*({vector}*)(" in source
    assert "__shfl_down_sync((uint)4294967295, acc_ptr[" in source and f", {fmt.threads}))" in source
    assert "__launch_bounds__(128)" in source and "__shared__" not in source
    assert ("blockIdx.y" in source) is not fmt.batch_inner


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 3, 5), (2, 5, 7, 9), (3, 17, 33, 65), (4, 16, 64, 32), (1, 197, 64, 197), (2, 9, 1, 40)],
    ids=str,
)
@pytest.mark.parametrize(("form", "kc"), [("3d", 8), ("flat", 256), ("flat-packed", 8), ("3d-packed", 256)])
def test_gemm_matches_numpy(shape: tuple[int, int, int, int], form: str, kc: int) -> None:
    """Rows off the register block, columns off the panel (the clamped tail), a panel wider
    than ``n``, K = 1; ``flat``: the 2-D form of one product; ``packed``: ``b`` by panels (a
    weight's layout); ``kc`` 8: K in blocks, the last one partial."""
    import tvm

    from targets.tvm.kernels.formats import GEMM_PANEL, panels

    g, m, k, n = shape
    flat, packed = form.startswith("flat"), form.endswith("packed")
    if flat and g != 1:
        with pytest.raises(ValueError, match="one matrix product"):
            gemm_kernel(g, m, k, n, lanes=8, flat=True)
        return
    set_threads()
    func = gemm_kernel(g, m, k, n, lanes=8, vectors=GEMM_PANEL // 8, kc=kc, packed_b=packed, flat=flat)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(host_target()))
    rng = np.random.default_rng(2)
    a = rng.standard_normal((g, m, k)).astype(np.float32)
    b = rng.standard_normal((g, k, n)).astype(np.float32)
    y = np.full((g, m, n), np.nan, np.float32)
    stored = np.stack([panels(x, GEMM_PANEL) for x in b]) if packed else b
    args = [tvm.runtime.tensor(t[0] if flat else t) for t in (a, stored, y)]
    lib["main"](*args)
    np.testing.assert_allclose(args[2].numpy().reshape(g, m, n), a @ b, rtol=1e-5, atol=1e-5)
