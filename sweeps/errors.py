"""Sweep errors: bad input the user can fix. The CLIs print them as one line and exit with status 2."""

from tinymem.errors import ConfigError


class SweepError(ConfigError):
    """A sweep cannot start: bad flag, search space, cluster address or tracking server.

    A subclass of `tinymem.errors.ConfigError` (and so of `TinyMemError`), so callers that catch the library's
    errors catch these too.
    """
