"""Which MLflow backend a sweep logs to: the default (a SQLite file under the storage root) and the check that
fails fast, with one line naming the URI, before any trial.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from sweeps.errors import SweepError
from tinymem.store import default_tracking_uri as store_default_tracking_uri

TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def default_tracking_uri(storage_root: str) -> str:
    """A SQLite file under the storage root, or under the default local root (`DEFAULT_ROOT`) when the root is
    an object store (SQLite needs a local file; the driver is its only writer)."""
    return store_default_tracking_uri(storage_root)  # the one rule, shared with `tinymem mitigate --from-run`


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with one line naming the URI, if MLflow cannot use it. No trial has started yet."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() == "true":
            return
        raise SweepError(f"tracking URI {uri!r} is a file store, which MLflow 3 refuses; "
                         f"use sqlite:///PATH.db or http://HOST:PORT")
    if scheme not in TRACKING_SCHEMES:
        raise SweepError(f"unsupported tracking URI scheme {scheme!r} in {uri!r}; allowed: {list(TRACKING_SCHEMES)}")
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path:
            raise SweepError(f"tracking URI {uri!r}: expected sqlite:///PATH (an absolute or relative file path)")
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            sqlite3.connect(str(p), timeout=timeout).close()
        except (OSError, sqlite3.Error) as e:
            raise SweepError(f"tracking URI {uri!r}: cannot open the SQLite file: {e}") from None
        return
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (user-given server)
                if resp.status != 200:
                    raise SweepError(f"tracking server {uri} answered {resp.status} on /health")
        except urllib.error.HTTPError as e:
            raise SweepError(f"tracking server {uri} answered HTTP {e.code} on /health; is it an MLflow server?"
                             ) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SweepError(f"tracking server {uri} is unreachable ({reason}); start it with "
                             f"`mlflow server --host 127.0.0.1 --port PORT` or pass another --tracking-uri"
                             ) from None
