"""Typed errors. Each message is one line that names the problem and the fix."""


class CompressorError(Exception):
    """Base of every error the tool reports to the user (exit code != 0, one stderr line)."""


class ConfigError(CompressorError):
    """A bad option, recipe, pass argument, target or backend name."""


class ModelLoadError(CompressorError):
    """The model file is missing, corrupt, unsafe to load or does not run."""


class DataError(CompressorError):
    """The --data file is missing, malformed or does not fit the model."""


class PassError(CompressorError):
    """A pass failed; the message names the pass and the passes that ran before it."""


class LoweringError(CompressorError):
    """Exporting, building or loading an artifact for a target failed."""


class VerificationError(CompressorError):
    """A lowered artifact does not compute what the torch model computes."""


class OutputError(CompressorError):
    """The output folder cannot be written."""


class DeviceError(CompressorError):
    """The device behind ``--rpc``/``--tracker``/``--emulate`` is unreachable, failed or is the
    wrong kind; what was built is kept."""


class BackendUnavailable(DeviceError):
    """The device cannot run this backend at all (an ONNX Runtime without the CUDA provider, a
    TVM RPC server that serves no ONNX Runtime): with ``--backend auto`` that backend is skipped
    and another shipped; asked for by name, it is a device fault (what was built is kept)."""
