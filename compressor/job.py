"""The ``compress`` job: load -> passes -> lower per target/backend -> verify -> measure -> report.

Straight-line, one step per line; the CLI only parses options into a ``Job`` and renders.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from compressor.data import load_task
from compressor.errors import ConfigError, DeviceError
from compressor.modelio import load_model, parse_input_shapes, save_exported
from compressor.output import check_output_dir, output_dir
from compressor.pipeline import Instrument, PassContext, Pipeline, Progress, no_progress
from compressor.plots import write_plots, write_tables
from compressor.recipe import load_recipe, parse
from compressor.report import build_report, target_entry

DEFAULT_SPARSITY = 0.5


class UI(Instrument, Protocol):
    """Progress display: named steps, progress bars for passes, and the instrument hooks."""

    def step(self, text: str) -> contextlib.AbstractContextManager[None]: ...

    def progress(self, description: str, total: int) -> Progress: ...


class QuietUI:
    progress = staticmethod(no_progress)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        yield

    def before_pass(self, name: str, state: Any) -> None:
        pass

    def after_pass(self, name: str, state: Any, record: Any) -> None:
        pass


@dataclass(frozen=True)
class Job:
    model: Path
    targets: tuple[str, ...] = ("cpu",)
    backend: str = "default"
    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None
    emulate: bool = False
    recipe: str | None = None
    sparsity: float | None = None
    data: Path | None = None
    loss: str | None = None
    metric: str | None = None
    input_shape: str | None = None
    out: Path | None = None
    measure: bool = True
    plot: bool = False
    trust_pickle: bool = False
    seed: int = 0

    @property
    def out_dir(self) -> Path:
        return self.out or self.model.with_name(f"{self.model.stem}-compressed")

    def pipeline(self) -> Pipeline:
        if self.recipe is not None and self.sparsity is not None:
            raise ConfigError("give --recipe or --sparsity, not both (put the sparsity in the recipe)")
        if self.recipe is not None:
            return load_recipe(self.recipe)
        sparsity = DEFAULT_SPARSITY if self.sparsity is None else self.sparsity
        return parse(f"[magnitude-prune: {{sparsity: {sparsity!r}}}]")

    def pairs(self) -> list[tuple[str, str]]:
        import targets

        return [(t, b) for t in dict.fromkeys(self.targets) for b in targets.backends_for(t, self.backend)]

    def check_device(self) -> None:
        """One way to reach a device, given exactly when a target needs one."""
        from compressor.registry import TARGETS
        from targets.remote import parse_address

        ways = [
            name
            for name, given in (("--rpc", self.rpc), ("--tracker", self.tracker), ("--emulate", self.emulate))
            if given
        ]
        chosen = [TARGETS.get(t) for t in dict.fromkeys(self.targets)]
        if len(ways) > 1:
            raise ConfigError(f"give one of {' / '.join(ways)}, not several")
        if bool(self.tracker) != bool(self.key):
            raise ConfigError("--tracker and --key go together: the tracker hands out a device by its key")
        if self.emulate and not any(t.emulator for t in chosen):
            raise ConfigError("--emulate is for the arm64 target; add --target arm64")
        if ways and not any(t.rpc for t in chosen):
            raise ConfigError(f"{ways[0]} is for targets that run on a device (arm64, cuda); add --target")
        needy = [t.name for t in chosen if t.remote]
        if needy and not ways:
            raise ConfigError(
                f"target {needy[0]} runs on a device: give --rpc HOST:PORT (a TVM RPC server on it), "
                "--tracker HOST:PORT --key KEY, or --emulate (an emulated arm64 device)"
            )
        if self.rpc:
            parse_address(self.rpc, "--rpc")
        if self.tracker:
            parse_address(self.tracker, "--tracker")


def is_main_process() -> bool:
    """False on the ranks other than 0 of a ``torchrun`` launch."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() > 0)


def run_job(job: Job, ui: UI | None = None) -> dict[str, Any]:
    """Run ``job``; write its output folder; return the report. Raises ``CompressorError``."""
    ui = ui or QuietUI()
    # Check every option before any slow step.
    pipeline = job.pipeline()
    pairs = job.pairs()
    job.check_device()
    shapes = parse_input_shapes(job.input_shape) if job.input_shape else None
    check_output_dir(job.out_dir)

    with ui.step("loading the model"):
        task = load_task(job.data, job.loss, job.metric) if job.data else None
        original = load_model(job.model, trust_pickle=job.trust_pickle, input_shapes=shapes, task=task)
        metric_before = original.evaluate()
    final = pipeline.apply(
        original, PassContext(seed=job.seed, instruments=(ui,), progress=ui.progress)
    ).state
    if not is_main_process():  # under torchrun only rank 0 writes
        return {}

    entries: list[dict[str, Any]] = []
    failures: list[DeviceError] = []  # the device failed, not the model: keep what was built
    with output_dir(job.out_dir) as out, tempfile.TemporaryDirectory() as scratch:
        with ui.step("saving the compressed model (torch.export)"):
            save_exported(final, out / "model.pt2")
            (out / "recipe.yaml").write_text(str(pipeline))
            write_tables(final.history, out / "tables")
        if job.plot:
            with ui.step("plotting"):
                write_plots(final.history, out / "plots")
        for target in dict.fromkeys(t for t, _ in pairs):
            try:
                with open_device(job, target, ui) as device:
                    for backend in (b for t, b in pairs if t == target):
                        try:
                            entries.append(
                                lower_and_measure(
                                    job, original, final, target, backend, device, out, Path(scratch), ui
                                )
                            )
                        except DeviceError as e:
                            failures.append(e)
            except DeviceError as e:
                failures.append(e)
        report = build_report(job, original, final, metric_before, pipeline, entries)
        if failures:
            report["error"] = "; ".join(map(str, failures))
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if failures:
        raise DeviceError(f"{failures[0]}; what was built is kept in {job.out_dir}")
    return report


@contextlib.contextmanager
def open_device(job: Job, target: str, ui: UI) -> Iterator[Any]:
    """The device ``target`` runs on: this host, or one reached as the job's options say."""
    import targets
    from compressor.registry import TARGETS

    tgt = TARGETS.get(target)
    if job.emulate and tgt.emulator:
        from targets.emulator import emulated_device

        with contextlib.ExitStack() as stack:
            with ui.step(f"{target}: starting the emulated device (qemu; provisioned once, ~4 min)"):
                device = stack.enter_context(emulated_device())
            yield device
    elif (job.rpc or job.tracker) and tgt.rpc:
        from targets.remote import connect, request

        where = job.rpc or f"{job.tracker} ({job.key})"
        with ui.step(f"{target}: connecting to the device at {where}"):
            device = connect(job.rpc) if job.rpc else request(str(job.tracker), str(job.key))
        yield device
    else:
        yield targets.LOCAL


def lower_and_measure(
    job: Job,
    original: Any,
    final: Any,
    target: str,
    backend: str,
    device: Any,
    out: Path,
    scratch: Path,
    ui: UI,
) -> dict[str, Any]:
    """Lower, verify (and bundle, for a device), then time against the dense model: one report entry."""
    import targets
    from targets.bundle import write_bundle

    with ui.step(f"{target}/{backend}: lowering and verifying"):
        compiled = targets.lower(final, target, backend, out / f"{target}-{backend}", device)
        if compiled.target.rpc:  # runs elsewhere: the bundle goes with it
            write_bundle(compiled, seed=job.seed)
        compiled.verify(seed=job.seed)
    dense_latency = latency = dense_bytes = None
    if job.measure:
        with ui.step(f"{target}/{backend}: lowering and verifying the dense model"):
            dense = targets.lower(original, target, backend, scratch / f"{target}-{backend}", device)
            dense.verify(seed=job.seed)
        with ui.step(f"{target}/{backend}: measuring latency (compressed and dense, interleaved)"):
            timed = targets.measure_samplers({"model": compiled.sampler(), "dense": dense.sampler()})
        latency, dense_latency = timed["model"], timed["dense"]
        dense_bytes = dense.artifact.stat().st_size
    return target_entry(compiled, out, latency, dense_latency, dense_bytes)
