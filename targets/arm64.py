"""The ``arm64`` target: ARM64 phones and boards, reached over TVM RPC or emulated.

TVM builds for ``aarch64-linux-gnu`` with NEON (``aarch64-linux-android`` when
``ANDROID_NDK_HOME`` names an NDK) and links with the matching cross compiler: Debian's
``aarch64-linux-gnu-g++``, or the NDK's clang. ONNX Runtime ships the ONNX model and its ORT
Mobile form (``model.ort``). Both run on the device for verification and timing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from compressor.errors import LoweringError
from compressor.registry import TARGETS
from targets.base import Target
from targets.tvm.cpu import CPU_KERNELS
from targets.tvm.devices import DEVICES, TvmDevice

ARM64 = TARGETS.register("arm64")(
    Target(
        name="arm64",
        description="an ARM64 phone or board over TVM RPC (--rpc, --tracker) or emulated (--emulate)",
        backends=("tvm", "onnxruntime"),
        remote=True,
        rpc=True,
        emulator=True,
        machine="aarch64",
    )
)

GCC = "aarch64-linux-gnu-g++"


def android_ndk() -> Path | None:
    ndk = os.environ.get("ANDROID_NDK_HOME")
    return Path(ndk) if ndk else None


def tvm_target(device: object = None) -> dict[str, Any]:
    triple = "aarch64-linux-android" if android_ndk() else "aarch64-linux-gnu"
    return {"kind": "llvm", "mtriple": triple, "mattr": ["+neon"]}


def compiler() -> Any:
    """The ``export_library`` compiler: the NDK's clang for Android, else Debian's cross g++."""
    from tvm.support import cc, ndk

    if (root := android_ndk()) is not None:
        clang = next(
            (root / "toolchains" / "llvm" / "prebuilt").glob("*/bin/aarch64-linux-android*-clang++"), None
        )
        if clang is None:
            raise LoweringError(
                f"ANDROID_NDK_HOME={root} has no aarch64-linux-android clang++; fix or unset it"
            )
        os.environ.setdefault("TVM_NDK_CC", str(clang))
        return ndk.create_shared
    if shutil.which(GCC) is None:
        raise LoweringError(f"{GCC} is not installed; apt-get install g++-aarch64-linux-gnu")
    return cc.cross_compiler(GCC)


DEVICES["arm64"] = TvmDevice(target=tvm_target, kernels=CPU_KERNELS, compiler=compiler)
