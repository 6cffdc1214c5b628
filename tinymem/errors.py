"""User-facing errors: raised for bad input, printed by the CLIs as one line without a traceback."""


class TinyMemError(Exception):
    """Base class for errors the user can fix (bad preset, key, value, file)."""


class ConfigError(TinyMemError, ValueError):
    """A configuration value is unknown or out of range. The message names it and what is allowed."""


class StoreError(TinyMemError):
    """A model-store entry is missing, damaged or cannot be written."""
