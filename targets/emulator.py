"""An arm64 device for machines without one: a Debian arm64 root run by qemu-user.

    python -m targets.emulator provision        # build (or check) the cached root
    python -m targets.emulator serve [--count 2] [--port 9190] [--tracker HOST:PORT --key KEY]

The root (Debian bookworm, minbase, with Python 3.11) is made by ``debootstrap``; a virtual
environment in it holds the aarch64 wheels of the same apache-tvm, numpy and onnxruntime
versions as this host, downloaded here by pip and installed there offline. It is cached under
``$COMPRESSOR_CACHE`` (or ``~/.cache/compressor``) and re-used while those versions match.
``serve`` starts ``targets/runtime/server.py`` inside it under ``chroot`` on loopback — the same
TVM RPC server a board runs — optionally registered with a tracker.

Needs root and Debian's ``qemu-user-static binfmt-support debootstrap``. Emulated latency is
not the latency of any phone: results from it carry ``emulated: true``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from compressor.errors import DeviceError
from compressor.paths import cache_root
from targets.remote import Device, connect

SUITE = "bookworm"  # its python3 is 3.11, the version the wheels are fetched for
MIRROR = os.environ.get("COMPRESSOR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
VENV = "/opt/compressor"
PINNED = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml-dtypes", "onnxruntime")
UNPINNED = ("cloudpickle", "psutil", "packaging", "typing-extensions")  # tvm's own requirements
APT_FIX = "apt-get install qemu-user-static binfmt-support debootstrap"
START_SECONDS = 180.0
RUNTIME = Path(__file__).resolve().parent / "runtime"


def root_dir() -> Path:
    """``$COMPRESSOR_ARM64_ROOT``, else ``arm64-debian-bookworm`` in ``cache_root()``."""
    return Path(os.environ.get("COMPRESSOR_ARM64_ROOT") or cache_root() / f"arm64-debian-{SUITE}")


def requirements() -> list[str]:
    """The wheels for the root: this host's versions of the runtimes, and their dependencies."""
    pins = []
    for name in PINNED:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return [*pins, *UNPINNED]


def check_host() -> None:
    """Root, the tools, and qemu registered for aarch64 binaries (mounting binfmt_misc if needed)."""
    if os.geteuid() != 0:
        raise DeviceError(
            "--emulate needs root (debootstrap and chroot); run as root or give --rpc/--tracker"
        )
    missing = [t for t in ("qemu-aarch64-static", "debootstrap", "chroot") if shutil.which(t) is None]
    if missing:
        raise DeviceError(f"--emulate needs {', '.join(missing)}: {APT_FIX}")
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], capture_output=True)
    entry = binfmt / "qemu-aarch64"
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not entry.exists() or "enabled" not in entry.read_text():
        raise DeviceError(
            "qemu is not registered for aarch64 binaries (no enabled /proc/sys/fs/binfmt_misc/qemu-aarch64); "
            f"{APT_FIX}, then update-binfmts --enable qemu-aarch64"
        )


def _run(cmd: list[str], what: str, log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        lines = log.read_text().strip().splitlines()
        raise DeviceError(f"{what} failed ({lines[-1] if lines else done.returncode}); see {log}")


def provision(root: Path | None = None, say: Callable[[str], None] = lambda _: None) -> Path:
    """Make the arm64 root at ``root`` (default ``root_dir()``) unless it is there and current."""
    check_host()
    root = root or root_dir()
    marker = root / "opt" / "compressor.json"
    wanted = {"suite": SUITE, "requirements": requirements()}
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one provisioning at a time; the others then re-use it
        if marker.is_file() and json.loads(marker.read_text()) == wanted:
            return root
        log = root.with_name(root.name + ".log")
        log.write_text("")
        if not (root / "opt" / "debootstrap.done").is_file():
            say(f"bootstrapping Debian {SUITE} arm64 (a few minutes, once)")
            shutil.rmtree(root, ignore_errors=True)
            _run(
                [
                    "debootstrap",
                    "--arch=arm64",
                    "--variant=minbase",
                    "--include=python3,python3-venv",
                    SUITE,
                    str(root),
                    MIRROR,
                ],
                "debootstrap of the arm64 root",
                log,
            )
            (root / "opt" / "debootstrap.done").write_text("")
        say("installing the aarch64 wheels of TVM, ONNX Runtime and numpy")
        wheels = root / "opt" / "wheels"
        shutil.rmtree(wheels, ignore_errors=True)
        shutil.rmtree(root / VENV.lstrip("/"), ignore_errors=True)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--platform",
                "manylinux_2_28_aarch64",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "-d",
                str(wheels),
                *wanted["requirements"],
            ],
            "downloading the aarch64 wheels",
            log,
        )
        _run(["chroot", str(root), "python3", "-m", "venv", VENV], "creating the venv in the arm64 root", log)
        _run(
            [
                "chroot",
                str(root),
                f"{VENV}/bin/pip",
                "install",
                "-q",
                "--no-index",
                "--find-links",
                "/opt/wheels",
                *wanted["requirements"],
            ],
            "installing the wheels in the arm64 root",
            log,
        )
        shutil.rmtree(wheels)
        marker.write_text(json.dumps(wanted))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """RPC servers running in the arm64 root; stops them on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, port: int = 0, tracker: str | None = None, key: str = "") -> int:
        """Start one server on ``127.0.0.1`` (a free port unless given); return its port."""
        runtime = self.root / VENV.lstrip("/") / "runtime"
        runtime.mkdir(parents=True, exist_ok=True)
        for path in RUNTIME.glob("*.py"):
            shutil.copy(path, runtime / path.name)
        port = port or free_port()
        cmd = [
            "chroot",
            str(self.root),
            f"{VENV}/bin/python",
            f"{VENV}/runtime/server.py",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-end",
            str(port + 50),
        ]
        if tracker:
            cmd += ["--tracker", tracker, "--key", key]
        env = {
            **os.environ,
            "COMPRESSOR_EMULATED": "1",
            "PYTHONUNBUFFERED": "1",
            "TVM_NUM_THREADS": str(os.cpu_count() or 1),
        }
        log = Path(tempfile.mkstemp(prefix="arm64-server-", suffix=".log")[1])
        self.logs.append(log)
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log.open("w"), env=env, start_new_session=True
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_SECONDS)
        line = proc.stdout.readline().decode() if ready else ""  # "serving on HOST:PORT"
        if not line.startswith("serving on"):
            tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
            raise DeviceError(f"the emulated arm64 RPC server did not start ({tail[0]}); see {log}")
        return int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
        self.procs.clear()
        for log in self.logs:
            log.unlink(missing_ok=True)
        self.logs.clear()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def emulated_device(say: Callable[[str], None] = lambda _: None) -> Iterator[Device]:
    """Provision (or re-use) the root, start one server on loopback, yield a session to it."""
    root = provision(say=say)
    with Emulator(root) as emulator:
        port = emulator.start()
        device = connect(f"127.0.0.1:{port}")
        device.name = f"the emulated arm64 device (qemu, 127.0.0.1:{port})"
        yield device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("provision", help="build or check the cached arm64 root")
    serve = sub.add_parser("serve", help="run RPC servers in the arm64 root until interrupted")
    serve.add_argument("--count", type=int, default=1, help="how many servers (devices)")
    serve.add_argument("--port", type=int, default=9190, help="first port (the others follow)")
    serve.add_argument("--tracker", help="HOST:PORT of a TVM RPC tracker to register with")
    serve.add_argument("--key", default="arm64", help="device key at the tracker")
    args = parser.parse_args(argv)
    try:
        root = provision(say=lambda text: print(text, file=sys.stderr))
        if args.command == "provision":
            print(root)
            return 0
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the servers on kill too
        with Emulator(root) as emulator:
            for i in range(args.count):
                port = emulator.start(args.port + 100 * i, args.tracker, args.key)
                print(f"emulated arm64 device {i + 1} serving on 127.0.0.1:{port}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while all(p.poll() is None for p in emulator.procs):
                    time.sleep(1)
        return 0
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
