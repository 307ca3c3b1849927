"""The ``cpu`` target: the x86-64 host this runs on."""

from compressor.registry import TARGETS
from targets.base import Target

CPU = TARGETS.register("cpu")(
    Target(
        name="cpu",
        description="this host's CPU (x86-64)",
        backends=("onnxruntime", "tvm"),
    )
)
