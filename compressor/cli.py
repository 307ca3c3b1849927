"""``compress``: parse options, run the job, render the report. Nothing else lives here."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from compressor.errors import CompressorError, ConfigError
from compressor.job import Job, run_job
from compressor.logs import captured, log_path
from compressor.output import new_run_id
from compressor.report import kernels_table, summary_table, targets_table
from compressor.state import PassRecord


class RichBar:
    """A transient rich progress bar showing the latest loss / metric."""

    def __init__(self, console: Console, description: str, total: int) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task(description, total=total, info="")
        self.info: dict[str, float] = {}
        self.bar.start()

    def update(self, advance: int = 1, **info: float) -> None:
        self.info.update(info)
        text = " ".join(f"{k} {v:.4g}" for k, v in self.info.items())
        self.bar.update(self.task, advance=advance, info=text)

    def close(self) -> None:
        self.bar.stop()


class RichUI:
    """Spinners and one line per finished step, on stderr (stdout carries the result)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextlib.contextmanager
    def step(self, text: str, live: bool = True) -> Iterator[None]:
        start = time.perf_counter()
        with self.console.status(text) if live else contextlib.nullcontext():
            yield
        self.console.print(f"[green]✓[/] {text} [dim]({time.perf_counter() - start:.1f}s)[/]")

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]![/] {text}", highlight=False)

    def progress(self, description: str, total: int) -> RichBar:
        return RichBar(self.console, description, total)

    def before_pass(self, name: str, state: Any) -> None:
        pass

    def after_pass(self, name: str, state: Any, record: PassRecord) -> None:
        metric = "" if record.metric is None else f", metric {record.metric:.4g}"
        self.console.print(
            f"[green]✓[/] pass {name}: sparsity {record.sparsity:.1%}, "
            f"{record.nonzeros:,}/{record.params:,} nonzero{metric} [dim]({record.seconds:.1f}s)[/]"
        )
        if refused := record.changes.get("refused"):
            self.console.print(f"[yellow]! pass {name} left the model unchanged: {refused}[/]")
        if removed := record.changes.get("removed"):
            self.console.print(f"  removed units: {', '.join(f'{k}: {v}' for k, v in removed.items())}")
        if capped := record.changes.get("capped"):
            layers = capped["layers"]
            shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
            self.console.print(
                f"  capped at {capped['at']:.0%} (the rest of their share went to other layers): {shown}",
                highlight=False,
            )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--target",
    "targets",
    multiple=True,
    default=("cpu",),
    show_default=True,
    help="Device to lower for (repeatable): cpu (this host), arm64, cuda.",
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="Backend per target: auto (build, verify and time every one the target has; ship the fastest), "
    "all (every one, each must succeed), onnxruntime or tvm.",
)
@click.option(
    "--rpc",
    metavar="HOST:PORT",
    help="TVM RPC server on the device (arm64, or a GPU machine for cuda) to measure on.",
)
@click.option(
    "--tracker", metavar="HOST:PORT", help="TVM RPC tracker to request the device from (with --key)."
)
@click.option("--key", help="Device key at the --tracker.")
@click.option(
    "--emulate", is_flag=True, help="Run arm64 artifacts on an emulated arm64 device (qemu; needs root)."
)
@click.option(
    "--recipe", help="Pass pipeline: a YAML file or YAML text, e.g. '[magnitude-prune: {sparsity: 0.9}]'."
)
@click.option("--sparsity", type=float, help="Fraction of weights to prune, in [0, 1) (default 0.5).")
@click.option(
    "--data",
    type=click.Path(path_type=Path, dir_okay=False),
    help=".npz or .pt with x_train, y_train, x_val, y_val: enables the metric.",
)
@click.option("--loss", help="Override the loss inferred from the data: cross-entropy or mse.")
@click.option("--metric", help="Override the metric: accuracy, perplexity or mse.")
@click.option("--input-shape", help="Example input shape(s) where the file has none: 1x64, 1x32:int64, a,b.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder (default: MODEL's name + '-compressed', beside it).",
)
@click.option("--no-measure", is_flag=True, help="Build and verify only; skip latency.")
@click.option(
    "--tune",
    type=click.IntRange(min=0),
    default=0,
    metavar="TRIALS",
    help="Tune what our kernels leave to TVM with MetaSchedule, TRIALS measured candidates in all "
    "(cpu target; cached, so a second build tunes nothing new).",
)
@click.option("--plot", is_flag=True, help="Render the passes' schedules and analyses as PNGs in OUT/plots.")
@click.option(
    "--trust-pickle", is_flag=True, help="Allow loading a pickled nn.Module (runs code from the file)."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for verification inputs and passes."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout instead of tables.")
def compress(
    model: Path,
    targets: tuple[str, ...],
    backend: str,
    rpc: str | None,
    tracker: str | None,
    key: str | None,
    emulate: bool,
    recipe: str | None,
    sparsity: float | None,
    data: Path | None,
    loss: str | None,
    metric: str | None,
    input_shape: str | None,
    out: Path | None,
    no_measure: bool,
    tune: int,
    plot: bool,
    trust_pickle: bool,
    seed: int,
    as_json: bool,
) -> None:
    """Prune MODEL, lower it for each target, verify it against torch and measure its latency."""
    if sparsity is not None:
        from passes.common import check_sparsity

        check_sparsity(sparsity, "--sparsity")
    run_id = new_run_id()
    log = log_path(run_id)
    job = Job(
        model=model,
        targets=targets,
        backend=backend,
        rpc=rpc,
        tracker=tracker,
        key=key,
        emulate=emulate,
        recipe=recipe,
        sparsity=sparsity,
        data=data,
        loss=loss,
        metric=metric,
        input_shape=input_shape,
        out=out,
        measure=not no_measure,
        tune=tune,
        plot=plot,
        trust_pickle=trust_pickle,
        seed=seed,
        log=log,
        run_id=run_id,
    )
    try:
        with captured(log) as terminal:
            ui = RichUI(Console(file=terminal, width=None if terminal.isatty() else 120))
            report = run_job(job, ui)
    except CompressorError as e:
        raise type(e)(f"{e}{_log_hint(log)}") from e
    log.unlink(missing_ok=True)  # copied into the output folder
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(summary_table(report))
    console.print(targets_table(report))
    for entry in report["targets"]:
        if entry["kernels"]:
            console.print(kernels_table(entry))
    for target, chosen in report["chosen"].items():
        console.print(f"chosen for {target}: {chosen['backend']} ({chosen['artifact']}), {chosen['why']}")
    console.print(f"wrote {job.out_dir}")


def _log_hint(log: Path) -> str:
    """Where a failed run's third-party output is, if it printed any."""
    if log.is_file() and log.stat().st_size:
        return f" (what the libraries printed: {log})"
    log.unlink(missing_ok=True)
    return ""


def main() -> None:
    """Entry point: every failure is one line on stderr and a non-zero exit."""
    try:
        compress.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        sys.exit(_fail("aborted", 130))
    except click.ClickException as e:
        sys.exit(_fail(f"{e.format_message()} (see compress --help)", 2))
    except CompressorError as e:  # a bad option, recipe or name is a usage error
        usage = isinstance(e, ConfigError) or isinstance(e.__cause__, ConfigError)
        sys.exit(_fail(str(e), 2 if usage else 1))
    except KeyboardInterrupt:
        sys.exit(_fail("interrupted; no output was written", 130))


def _fail(message: str, code: int) -> int:
    click.echo(f"error: {message}", err=True)
    return code
