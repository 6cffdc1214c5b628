"""Sweep errors: bad input the user can fix. The CLIs print them as one line and exit with status 2."""

from tinymem.errors import ConfigError


class SweepError(ConfigError):
    """A sweep cannot start: bad flag, search space, cluster address or tracking server.

    A subclass of `tinymem.errors.ConfigError` (and so of `TinyMemError`), so callers that catch the library's
    errors catch these too.
    """


EXIT_TRACKING_PENDING = 3  # the exit status of a sweep that ran but MLflow does not hold all of it yet


class TrackingPending(SweepError):
    """The sweep's trials ran, but MLflow was unreachable until the end: their events wait in the sweep's ledger."""
