"""The few exception types users catch.

Every message names the thing and the place: file and line, key, field, the limit exceeded.
"""


class TilevlError(Exception):
    """Base class of every error tilevl raises on purpose."""


class ConfigError(TilevlError, ValueError):
    """A configuration value is missing, unknown or inconsistent."""


class CheckpointError(TilevlError, ValueError):
    """A checkpoint folder cannot be read or written as asked (names the file and key)."""


class InputError(TilevlError, ValueError):
    """User input (an image, a prompt, a conversation) cannot be used (names the source)."""


class MissingDependencyError(TilevlError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
