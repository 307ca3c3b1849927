"""What runs on the device: numpy, the TVM runtime or ONNX Runtime, no torch and no compressor.

These files are copied flat into every deployable bundle (``run.py`` verifies and times the
artifact there; ``server.py`` is a TVM RPC server that can also run ONNX Runtime), so they
import each other as top-level modules when run as scripts.
"""
