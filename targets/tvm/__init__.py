"""The TVM backend: ``torch.export`` -> Relax -> our kernels -> LLVM (or CUDA) -> ``model.so`` and
its weights, ``params.npz``. The files read in the order the model flows through them:

- ``export``: ``torch.export`` -> Relax (negative indices fixed first: the frontend miscomputes
  them), and the weights' names;
- ``rewrite``: every ``matmul(x, permute_dims(W))`` with a constant weight — linear layers and each
  unrolled step of an LSTM/GRU/RNN — becomes a ``call_tir`` to the kernel chosen for it;
- ``choose``: the kernel per weight, timed on the device among the candidates of its policy (``cpu``:
  our dense and sparse kernels; ``gpu``: TVM's dense schedule against our sparse kernels, or a cost
  model when no GPU is reachable); decisions cached by target, shape, batch and sparsity pattern;
- ``schedule``: TVM's pipeline, our schedules for what it leaves unscheduled;
- ``params``: the weights lifted out of the code into ``params.npz``; ``library``: writing
  ``model.so``;
- ``build``: the backend, and loading the library where it runs;
- ``kernels``: the TIR kernels by op family and device; ``devices``: what each target registers
  (TVM target, compiler, kernel policy), so the backend imports no device module.

Every artifact is verified against torch before it is timed.
"""

from targets.tvm.build import TvmBackend, load_runner, tvm_runtime_libs
from targets.tvm.choose import Choice, KernelChooser, default_cache
from targets.tvm.devices import DEVICES, Kernels, TvmDevice, host_target, set_threads, vector_lanes

__all__ = [
    "DEVICES",
    "Choice",
    "KernelChooser",
    "Kernels",
    "TvmBackend",
    "TvmDevice",
    "default_cache",
    "host_target",
    "load_runner",
    "set_threads",
    "tvm_runtime_libs",
    "vector_lanes",
]
