"""The cuda target on a GPU machine without TVM: build everything here, verify and time it there.

    python benchmarks/gpu_kit.py build [--kit .gpu-kit] [--arch sm_90]      # here: TVM + nvcc, no GPU
    python3 benchmarks/gpu_kit.py run [--kit .gpu-kit] [--out DIR]          # there: torch (CUDA), numpy

A GPU machine need not have TVM's compiler (~300 MB) or nvcc; the cuda bundles were made for that.
``build`` writes, under one folder (well under 64 MiB):

- ``bundles/NAME-pruned`` and ``NAME-dense``: the ``cuda-tvm`` bundles ``compress --target cuda``
  keeps for the zoo models and a small BERT-style encoder (90% one-shot, and unpruned: ``--sparsity 0``),
  the TVM runtime libraries once in ``lib/`` rather than in every bundle;
- ``kernels/CASE.so``: per weight shape, sparsity and batch every GPU candidate of the backend
  (ours: CSR with 4-32 lanes, BSR 4x1 and 1x4, batch-inner, fp16 values; TVM's dense schedule),
  compiled by nvcc into fatbins beside them; odd shapes (empty rows, a full row, K not a multiple
  of 4) for correctness. The weights are not shipped: ``plan.json`` holds each case's seed, and
  ``run`` makes them again with numpy and checks their packed sizes against the plan's;
- ``wheels/``: the ``apache-tvm-ffi`` wheel for the GPU machine's Python (pip install it first).

``run`` verifies every bundle with its own ``run.py`` (the runtime only, against the torch
outputs it carries; pruned and dense timed in turns, each in its own process), then checks
every kernel against a float64 product and times the fastest of each of ours against cuBLAS,
cuSPARSE CSR and TVM dense with CUDA events over CUDA graphs: *hot* (one weight, called over and
over: a sparse weight stays in the 60 MB L2) and *cold* (distinct copies of every operand,
cycled, more bytes than twice the L2, as a model of many layers reads them). Each part has its
own time limit; results go to ``DIR`` (``bundles.json``, ``kernels.json``, ``kernels.md``).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_kit_cases import (
    BATCHES,
    BERT,
    KINDS,
    ODD,
    ODD_BATCHES,
    ROOT,
    SHAPES,
    SPARSITIES,
    ZOO,
    case_name,
    case_weights,
)

# -- build (here) -------------------------------------------------------------------------------


def dense_func(n: int, k: int, batch: int, target: dict[str, Any]) -> Any:
    """The dense candidate: TVM's GPU schedule, or unscheduled for the CPU dry run."""
    from targets.tvm.gpu import gpu_dense_kernel

    if target["kind"] == "cuda":
        return gpu_dense_kernel(n, k, batch, target)
    from tvm import te

    x, wt = te.placeholder((batch, k), name="x"), te.placeholder((k, n), name="wt")
    r = te.reduce_axis((0, k), name="r")
    y = te.compute((batch, n), lambda b, i: te.sum(x[b, r] * wt[r, i], axis=r), name="y")
    return te.create_prim_func([x, wt, y])


def build_kernels(kit: Path, arch: str, dry_run: bool) -> list[dict[str, Any]]:
    """Every case's candidates in one library per case, compiled for ``arch``; the plan. The dry
    run builds the odd cases for this CPU, the thread loops serial (``gpu_kernel(threads=False)``)."""
    import tvm

    from targets import cuda
    from targets.remote import LOCAL
    from targets.tvm.devices import host_target
    from targets.tvm.gpu import compile_binaries, cuda_sources, gpu_candidates
    from targets.tvm.kernels import gpu_kernel, pack

    target = host_target() if dry_run else {**cuda.tvm_target(LOCAL), "arch": arch}
    folder = kit / "kernels"
    folder.mkdir(parents=True)
    cases = [] if dry_run else [(n, k, s, b, False) for n, k in SHAPES for s in SPARSITIES for b in BATCHES]
    cases += [(n, k, s, b, True) for n, k, s in ODD for b in ODD_BATCHES]
    plan, sources = [], []
    for seed, (n, k, sparsity, batch, odd) in enumerate(cases):
        weights = case_weights(n, k, sparsity, seed, odd)
        funcs: dict[str, Any] = {"dense": dense_func(n, k, batch, target)}
        entries = [{"name": "dense", "weight": "dense", "format": None, "shapes": [[k, n]]}]
        for kind, block in KINDS.items():
            formats = gpu_candidates(weights[kind], batch, threshold=0.0, fp16=True)
            for fmt in (f for f in formats if f.sparse and f.block == block):
                packed = pack(weights[kind], fmt)
                name = f"{kind}_{len(entries)}"
                funcs[name] = gpu_kernel(packed, batch, threads=not dry_run)
                shapes = [list(a.shape) for a in packed.arrays]
                entries.append({"name": name, "weight": kind, "format": asdict(fmt), "shapes": shapes})
        mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
        lib = tvm.compile(mod, target=tvm.target.Target(target))
        name = case_name(n, k, sparsity, batch) + ("-odd" if odd else "")
        lib.export_library(str(folder / f"{name}.so"))
        sources += cuda_sources(lib.mod)
        plan.append(
            {"name": name, "shape": [n, k], "sparsity": sparsity, "batch": batch, "seed": seed, "odd": odd}
            | {"functions": entries}
        )
        print(f"kernels {name}: {len(entries)} built", flush=True)
    if not dry_run:
        compile_binaries(sources, folder, target)
    return plan


def compress(model: Path, out: Path, recipe: list[str], arch: str) -> Path:
    """``compress MODEL --target cuda --backend tvm`` into ``out``; its kept ``cuda-tvm`` bundle.
    Without a GPU here the run ends with exit 1 and says the bundle was kept: that is expected."""
    command = [str(Path(sys.executable).parent / "compress"), str(model), "--target", "cuda"]
    command += ["--backend", "tvm", "--out", str(out), *recipe]
    done = subprocess.run(
        command, env={**os.environ, "COMPRESSOR_CUDA_ARCH": arch}, capture_output=True, text=True
    )
    bundle = out / "cuda-tvm"
    if not (bundle / "manifest.json").is_file():
        raise SystemExit(f"compress {model.name} wrote no cuda-tvm bundle:\n{done.stderr}")
    return bundle


def build_bundles(kit: Path, arch: str, work: Path) -> list[str]:
    """The zoo models' and a small BERT-style encoder's bundles, pruned and dense."""
    from models.real import bert, export

    models = {name: ROOT / "models" / "zoo" / f"{name}.pt" for name in ZOO}
    module, inputs = bert(**BERT)
    models["bert-tiny"] = work / "bert-tiny.pt2"
    export(module, inputs, models["bert-tiny"])
    recipes = {"pruned": ["--sparsity", "0.9"], "dense": ["--sparsity", "0"]}
    names = []
    for name, path in models.items():
        for variant, recipe in recipes.items():
            bundle = compress(path, work / f"{name}-{variant}", recipe, arch)
            target = kit / "bundles" / f"{name}-{variant}"
            shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("lib"))
            if not (kit / "lib").is_dir():
                shutil.copytree(bundle / "lib", kit / "lib")
            print(f"bundle {name}-{variant}: {sum(p.stat().st_size for p in target.rglob('*')):,} bytes")
        names.append(name)
    return names


def download_wheel(kit: Path, python: str) -> None:
    from importlib import metadata

    version = metadata.version("apache-tvm-ffi")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python, "--implementation", "cp", "-d", str(kit / "wheels")]
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64"):
        command += ["--platform", tag]
    subprocess.run([*command, f"apache-tvm-ffi=={version}"], check=True)


def build(kit: Path, arch: str, python: str, dry_run: bool) -> None:
    import tempfile

    if kit.exists():
        if not (kit / "plan.json").is_file():
            raise SystemExit(f"error: {kit} exists and is not a kit this script wrote; choose another --kit")
        shutil.rmtree(kit)
    kit.mkdir(parents=True)
    models: list[str] = []
    if dry_run:
        from targets.bundle import copy_tvm_runtime

        copy_tvm_runtime(kit / "lib", "cpu")
    else:
        with tempfile.TemporaryDirectory() as work:
            models = build_bundles(kit, arch, Path(work))
    plan = build_kernels(kit, arch, dry_run)
    if not dry_run:
        download_wheel(kit, python)
    device = "cpu" if dry_run else "cuda"
    plan_json = {"arch": arch, "device": device, "models": models, "cases": plan}
    (kit / "plan.json").write_text(json.dumps(plan_json, indent=1))
    size = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())
    print(f"wrote {kit}: {size / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["build", "run", "run-kernels", "report"])
    parser.add_argument("results", nargs="?", type=Path, help="report: the folder run wrote")
    parser.add_argument("--name", default="gpu", help="report: benchmarks/results/NAME-*.md")
    parser.add_argument("--kit", type=Path, default=ROOT / ".gpu-kit")
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--arch", default="sm_90", help="build: the GPU's compute capability")
    parser.add_argument("--python", default="3.12", help="build: the GPU machine's Python, for the wheel")
    parser.add_argument("--limit", type=float, default=420.0, help="run: seconds for everything")
    parser.add_argument("--parts", nargs="+", choices=["kernels", "bundles"], default=["kernels", "bundles"])
    parser.add_argument(
        "--dry-run", action="store_true", help="build: only the odd cases, for this CPU (no GPU, no nvcc)"
    )
    args = parser.parse_args()
    from benchmarks import gpu_kit_run as run  # torch and numpy only: what the GPU machine has

    if args.mode == "build":
        build(args.kit, args.arch, args.python, args.dry_run)
    elif args.mode == "report":
        run.report(args.results, args.name)
    elif args.mode == "run":
        run.run_all(args.kit, args.out, args.limit, args.parts)
    else:
        plan = json.loads((args.kit / "plan.json").read_text())
        results = run.run_kernels(args.kit, plan, args.limit)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernels.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "kernels.md").write_text(run.table(results))
        print(run.table(results))


if __name__ == "__main__":
    main()
