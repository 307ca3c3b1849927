"""The ``compress`` job: load -> passes -> lower per target/backend -> verify -> measure -> report.

Straight-line, one step per line; the CLI only parses options into a ``Job`` and renders.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from compressor.data import load_task
from compressor.errors import BackendUnavailable, ConfigError, DeviceError, LoweringError, VerificationError
from compressor.memory import watched
from compressor.modelio import load_model, parse_input_shapes, save_exported
from compressor.output import check_output_dir, new_run_id, output_dir
from compressor.pipeline import Instrument, PassContext, Pipeline, Progress, no_progress
from compressor.plots import write_plots, write_tables
from compressor.recipe import load_recipe, parse
from compressor.report import build_report, target_entry

DEFAULT_SPARSITY = 0.5
DEFAULT_EPOCHS = 10
BACKEND_CHOICES = ("auto", "all")
"""Besides a backend's name: ``auto`` (the default) builds every backend the target supports and
ships the fastest verified one, skipping those that cannot lower or verify the model; ``all``
builds every one and fails if any does."""


class UI(Instrument, Protocol):
    """Progress display: named steps, notes, progress bars for passes, and the instrument hooks."""

    def step(self, text: str, live: bool = True) -> contextlib.AbstractContextManager[None]:
        """A step of the job; ``live=False``: no animation (nothing redraws while models are timed)."""
        ...

    def note(self, text: str) -> None: ...

    def progress(self, description: str, total: int) -> Progress: ...


class QuietUI:
    progress = staticmethod(no_progress)

    @contextlib.contextmanager
    def step(self, text: str, live: bool = True) -> Iterator[None]:
        yield

    def note(self, text: str) -> None:
        pass

    def before_pass(self, name: str, state: Any) -> None:
        pass

    def after_pass(self, name: str, state: Any, record: Any) -> None:
        pass


@dataclass(frozen=True)
class Job:
    model: Path
    targets: tuple[str, ...] = ("cpu",)
    backend: str = "auto"
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
    tune: int = 0  # MetaSchedule trials for what our kernels leave to TVM (cpu target)
    plot: bool = False
    trust_pickle: bool = False
    seed: int = 0
    log: Path | None = None  # third-party output of the run, copied into the folder as log.txt
    run_id: str | None = None

    @property
    def out_dir(self) -> Path:
        return self.out or self.model.with_name(f"{self.model.stem}-compressed")

    def pipeline(self) -> Pipeline:
        """The recipe; by default, with data: gradual pruning while retraining for a few epochs,
        then dead-neuron removal; without data: one-shot magnitude pruning."""
        if self.recipe is not None and self.sparsity is not None:
            raise ConfigError("give --recipe or --sparsity, not both (put the sparsity in the recipe)")
        if self.recipe is not None:
            return load_recipe(self.recipe)
        sparsity = DEFAULT_SPARSITY if self.sparsity is None else self.sparsity
        if self.data is None:
            return parse(f"[magnitude-prune: {{sparsity: {sparsity!r}}}]")
        return parse(
            f"[gradual-prune: {{sparsity: {sparsity!r}, epochs: {DEFAULT_EPOCHS}, clip_grad_norm: 1.0}}, "
            "remove-dead-neurons]"
        )

    @property
    def strict(self) -> bool:
        """Whether a backend that cannot lower or verify the model fails the run (it was asked
        for) rather than being skipped."""
        return self.backend != "auto"

    def pairs(self) -> list[tuple[str, str]]:
        import targets

        return [(t, b) for t in dict.fromkeys(self.targets) for b in targets.backends_for(t, self.backend)]

    def check_tune(self) -> None:
        """``--tune`` times candidates on this host: for the cpu target and a backend that has TVM."""
        if not self.tune:
            return
        if self.tune < 0:
            raise ConfigError(f"--tune takes a number of trials >= 0, not {self.tune}")
        if set(self.targets) != {"cpu"}:
            raise ConfigError("--tune tunes on this host: use it with --target cpu only (for now)")
        if self.backend == "onnxruntime":
            raise ConfigError("--tune tunes TVM's functions: use it with --backend tvm, auto or all")

    def backend_options(self) -> dict[str, dict[str, Any]]:
        """Options of each backend's constructor, by name."""
        return {"tvm": {"tune": self.tune}} if self.tune else {}

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


@dataclass
class Built:
    """One backend's artifacts for a target: the compressed model's and the unpruned model's."""

    backend: str
    compiled: Any
    dense: Any = None
    build_s: float = 0.0  # lowering (kernel choice included) of the compressed model
    dense_build_s: float | None = None


def run_job(job: Job, ui: UI | None = None) -> dict[str, Any]:
    """Run ``job``; write its output folder; return the report. Raises ``CompressorError``."""
    with watched() as memory:
        return _run(job, ui or QuietUI(), memory)


def _run(job: Job, ui: UI, memory: Any) -> dict[str, Any]:
    run_id = job.run_id or new_run_id()
    # Check every option before any slow step.
    pipeline = job.pipeline()
    pairs = job.pairs()
    job.check_tune()
    job.check_device()
    shapes = parse_input_shapes(job.input_shape) if job.input_shape else None
    check_output_dir(job.out_dir)

    with ui.step("loading the model"):
        task = load_task(job.data, job.loss, job.metric) if job.data else None
        original = load_model(job.model, trust_pickle=job.trust_pickle, input_shapes=shapes, task=task)
        metric_before = original.evaluate()
    if task is None:
        ui.note("the model's accuracy was not checked (no --data): pruned one-shot, without retraining")
    final = pipeline.apply(
        original, PassContext(seed=job.seed, instruments=(ui,), progress=ui.progress)
    ).state
    if not is_main_process():  # under torchrun only rank 0 writes
        return {}

    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    failures: list[DeviceError] = []  # the device failed, not the model: keep what was built
    with output_dir(job.out_dir, run_id) as out, tempfile.TemporaryDirectory() as scratch:
        with ui.step("saving the compressed model (torch.export)"):
            save_exported(final, out / "model.pt2")
            (out / "recipe.yaml").write_text(str(pipeline))
            write_tables(final.history, out / "tables")
        if job.plot:
            with ui.step("plotting"):
                write_plots(final.history, out / "plots")
        for target in dict.fromkeys(t for t, _ in pairs):
            backends = [b for t, b in pairs if t == target]
            faults = len(failures)
            try:
                with open_device(job, target, ui) as device:
                    built = []
                    for backend in backends:
                        try:
                            built.append(
                                build(job, original, final, target, backend, device, out, scratch, ui)
                            )
                        except (LoweringError, VerificationError) as e:
                            if job.strict:
                                raise
                            skip(skipped, target, backend, e, ui)
                            shutil.rmtree(out / f"{target}-{backend}", ignore_errors=True)  # unverified
                        except BackendUnavailable as e:
                            if job.strict:
                                failures.append(e)
                            else:  # valid, but nothing here runs it: kept, with its bundle
                                skip(skipped, target, backend, e, ui, kept=True)
                        except DeviceError as e:
                            failures.append(e)
                    untimed: dict[str, str] = {}
                    try:
                        with memory.paused():
                            timed = time_all(job, target, built, ui, untimed)
                    except DeviceError as e:  # what was built and verified is still reported
                        failures.append(e)
                        timed = {}
                    if untimed and job.strict:
                        name, reason = next(iter(untimed.items()))
                        raise LoweringError(f"{target}/{name} could not be timed: {reason}")
                    entries += [entry(b, timed, untimed, out) for b in built]
            except DeviceError as e:
                failures.append(e)
            if len(failures) == faults and not any(e["target"] == target for e in entries):
                reasons = "; ".join(
                    f"{s['backend']}: {s['reason']}" for s in skipped if s["target"] == target
                )
                raise LoweringError(f"no backend could lower and verify the model for {target} ({reasons})")
        report = build_report(
            job.model, original, final, metric_before, str(pipeline), entries, skipped, job.measure
        )
        report["run"] = run_id
        if failures:
            report["error"] = "; ".join(map(str, failures))
        report["peak_rss_bytes"] = memory.peak  # sampled: the peak of this process and its children
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if job.log is not None and job.log.is_file():
            shutil.copy(job.log, out / "log.txt")
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


def build(
    job: Job,
    original: Any,
    final: Any,
    target: str,
    backend: str,
    device: Any,
    out: Path,
    scratch: str,
    ui: UI,
) -> Built:
    """Lower and verify the compressed model (and bundle it, for a device), then the unpruned
    one for comparison. Each runtime session is released once verified: only one lives at a time."""
    import targets
    from targets.bundle import write_bundle

    with ui.step(f"{target}/{backend}: lowering and verifying"):
        start = time.perf_counter()
        options = job.backend_options()
        compiled = targets.lower(final, target, backend, out / f"{target}-{backend}", device, options)
        build_s = time.perf_counter() - start
        if compiled.target.rpc:  # runs elsewhere: the bundle goes with it
            write_bundle(compiled, seed=job.seed)
        compiled.verify(seed=job.seed)
        compiled.release()
    built = Built(backend, compiled, build_s=build_s)
    if job.measure:
        with ui.step(f"{target}/{backend}: lowering and verifying the unpruned model"):
            try:
                start = time.perf_counter()
                built.dense = targets.lower(
                    original, target, backend, Path(scratch) / f"{target}-{backend}", device, options
                )
                built.dense_build_s = time.perf_counter() - start
                built.dense.verify(seed=job.seed)
            except (LoweringError, VerificationError) as e:
                raise type(e)(f"the unpruned model: {e}") from None
            built.dense.release()
    return built


def skip(
    skipped: list[dict[str, Any]], target: str, backend: str, error: Exception, ui: UI, kept: bool = False
) -> None:
    """Record a backend ``--backend auto`` leaves out, and say so."""
    skipped.append({"target": target, "backend": backend, "reason": str(error), "kept": kept})
    ui.note(f"{target}/{backend} skipped: {error}" + (" (its folder is kept)" if kept else ""))


def time_all(job: Job, target: str, built: list[Built], ui: UI, untimed: dict[str, str]) -> dict[str, Any]:
    """Time every artifact of ``target`` in turns, each alone (``targets.measure_compiled``):
    ``{backend: latency, backend + " dense": latency}``; one that cannot be timed is left out,
    its reason in ``untimed``."""
    import targets

    if not (job.measure and built):
        return {}
    models = {
        f"{b.backend}{suffix}": c for b in built for suffix, c in (("", b.compiled), (" dense", b.dense))
    }
    with ui.step(f"{target}: timing {len(models)} models, each alone, in turns", live=False):
        return targets.measure_compiled(models, failed=untimed)


def entry(built: Built, timed: dict[str, Any], untimed: dict[str, str], out: Path) -> dict[str, Any]:
    """The report entry of one backend's artifacts."""
    result = target_entry(
        built.compiled,
        out,
        timed.get(built.backend),
        timed.get(f"{built.backend} dense"),
        built.dense.nbytes if built.dense else None,
    )
    result["build_s"] = round(built.build_s, 2)
    result["dense_build_s"] = None if built.dense_build_s is None else round(built.dense_build_s, 2)
    errors = [f"{name}: {why}" for name, why in untimed.items() if name.split(" ")[0] == built.backend]
    if errors:
        result["timing_error"] = "; ".join(errors)
    return result
