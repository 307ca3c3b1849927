"""Writing a TVM library (``model.so``) without holding the model's weights three times over.

``export_library`` packs the executable (the VM's code and every constant: the model's weights)
into the shared library. By default it serialises that blob, turns it into an LLVM module holding
it as one constant, and emits an object file from it: three copies of the weights in memory at
once, 3.6x the fp32 weight bytes at the peak for a BERT-base-sized model. ``pack_imports`` (its
``fpack_imports`` hook) writes the same blob to a file instead, and an assembler file that
includes it (``.incbin``) under the symbol the runtime looks for, which the library's compiler
assembles (GNU as and clang both read it, for x86-64 and arm64): one copy, streamed to disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def library_symbol() -> str:
    """Where the TVM runtime finds a library's packed modules (``__tvm_ffi__library_bin``)."""
    import tvm_ffi

    return str(tvm_ffi.get_global_func("runtime.ModuleImportsBlobName")())


ASSEMBLY = """\
    .section .rodata
    .globl {symbol}
    .type {symbol}, %object
    .balign 64
{symbol}:
    .incbin "{blob}"
    .size {symbol}, . - {symbol}
    .section .note.GNU-stack,"",%progbits
"""


def pack_imports(module: Any, is_system_lib: bool, prefix: str, workspace: str) -> str:
    """``export_library``'s ``fpack_imports``: the packed imports of ``module`` as ``devc.bin`` (the
    bytes ``ModulePackImportsToC`` would spell out, size header included) and ``devc.S``."""
    import numpy as np
    import tvm_ffi

    if is_system_lib:
        raise ValueError("pack_imports writes shared libraries, not system libraries")
    blob = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(module)
    path = Path(workspace) / f"{prefix}devc.bin"
    np.from_dlpack(blob).tofile(path)  # a view of TVM's buffer: no copy here
    del blob
    source = Path(workspace) / f"{prefix}devc.S"
    source.write_text(ASSEMBLY.format(symbol=f"{prefix}{library_symbol()}", blob=path))
    return str(source)
