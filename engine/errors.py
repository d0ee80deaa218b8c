"""Exception types, one per thing a caller handles differently.

The app shows a bad model folder differently from a bad request or an out-of-memory, so each
gets its own type; every message names what is wrong and what is allowed.
"""


class SanaStudioError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(SanaStudioError):
    """A config.json that is unreadable, names an unknown model, or has unknown/missing keys."""


class CheckpointError(SanaStudioError):
    """A model folder or weight file that is missing, corrupt, or does not match its config."""


class RequestError(SanaStudioError, ValueError):
    """A GenerationRequest field outside its allowed range."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class OutputError(SanaStudioError):
    """An output path that cannot be written."""


class DeviceError(SanaStudioError):
    """A device that was asked for but is not there (e.g. `cuda` on a machine without CUDA)."""
