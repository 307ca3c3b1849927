"""The kernels we write in TIR, by op family and device: how a constant weight is stored
(``formats``), and the matmul ``y = x @ W.T`` on a CPU (``matmul_cpu``) and a GPU
(``matmul_gpu``), the GEMM of two activations on a CPU (``gemm_cpu``); the convolution
(``conv_cpu``) and the row-wise softmax and layer norm (``rows_cpu``) on a CPU are imported by
the rewrites that use them."""

from targets.tvm.kernels.formats import Format, Packed, block_fill, index_dtype, pack, unpack
from targets.tvm.kernels.gemm_cpu import gemm_kernel
from targets.tvm.kernels.matmul_cpu import kernel
from targets.tvm.kernels.matmul_gpu import gpu_kernel

__all__ = [
    "Format",
    "Packed",
    "block_fill",
    "gemm_kernel",
    "gpu_kernel",
    "index_dtype",
    "kernel",
    "pack",
    "unpack",
]
