"""The ``cpu`` target: the x86-64 host this runs on."""

from compressor.registry import TARGETS
from targets.base import Target
from targets.tvm.cpu import CPU_KERNELS
from targets.tvm.devices import DEVICES, TvmDevice, host_target

CPU = TARGETS.register("cpu")(
    Target(
        name="cpu",
        description="this host's CPU (x86-64)",
        backends=("onnxruntime", "tvm"),
    )
)

DEVICES["cpu"] = TvmDevice(target=host_target, kernels=CPU_KERNELS)
