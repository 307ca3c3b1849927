"""The kernels we write in TIR, by op family and device: how a constant weight is stored
(``formats``), and the matmul ``y = x @ W.T`` on a CPU (``matmul_cpu``) and a GPU
(``matmul_gpu``)."""

from targets.tvm.kernels.formats import Format, Packed, block_fill, index_dtype, pack, unpack
from targets.tvm.kernels.matmul_cpu import kernel
from targets.tvm.kernels.matmul_gpu import gpu_kernel

__all__ = ["Format", "Packed", "block_fill", "gpu_kernel", "index_dtype", "kernel", "pack", "unpack"]
