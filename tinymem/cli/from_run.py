"""Read a sweep trial's config back from its MLflow run, for `tinymem mitigate --from-run RUN_ID`.

A sweep's driver stores, in each trial's child run, the config that rebuilds the trial's model (tag
`tinymem.trial_config`, JSON; written by `sweeps.models`). This module reads that one tag with the standard
library only, because the library never imports MLflow (the layering rule: `tinymem/` works from a notebook
without the orchestration stack installed): over MLflow's REST API (`GET /api/2.0/mlflow/runs/get`) for an
`http(s)://` tracking server, or straight from the `tags` table of a `sqlite:///` store.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tinymem.errors import ConfigError, TinyMemError
from tinymem.store import TRIAL_CONFIG_TAG

SCHEMES = ("sqlite:///PATH", "http://HOST:PORT", "https://HOST")


def run_tags_sqlite(uri: str, run_id: str) -> dict[str, str]:
    """Every tag of run `run_id` in the SQLite store `uri` (opened read-only)."""
    path = Path(uri[len("sqlite:///"):])
    if not path.is_file():
        raise TinyMemError(f"no MLflow store at {uri} (file {path} is missing); give --tracking-uri")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            if db.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is None:
                raise TinyMemError(f"no run {run_id!r} in the MLflow store {uri}")
            return dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
    except sqlite3.Error as e:
        raise TinyMemError(f"cannot read the MLflow store {uri}: {e}") from None


def run_tags_http(uri: str, run_id: str, timeout: float = 30.0) -> dict[str, str]:
    """Every tag of run `run_id` on the MLflow tracking server `uri` (REST API 2.0)."""
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/runs/get?{urllib.parse.urlencode({'run_id': run_id})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (a user-given server)
            body = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise TinyMemError(f"no run {run_id!r} on the MLflow server {uri}") from None
        raise TinyMemError(f"MLflow server {uri} answered HTTP {e.code} for run {run_id!r}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
        raise TinyMemError(f"MLflow server {uri} is unreachable ({getattr(e, 'reason', e)})") from None
    tags = body.get("run", {}).get("data", {}).get("tags", [])
    return {t["key"]: t.get("value", "") for t in tags}


def trial_config_from_run(run_id: str, tracking_uri: str) -> dict[str, Any]:
    """The trial config stored in run `run_id` (a dict for `tinymem.trial.run_trial`)."""
    if tracking_uri.startswith("sqlite:///"):
        tags = run_tags_sqlite(tracking_uri, run_id)
    elif tracking_uri.startswith(("http://", "https://")):
        tags = run_tags_http(tracking_uri, run_id)
    else:
        raise ConfigError(f"unsupported --tracking-uri {tracking_uri!r} for --from-run; allowed: {list(SCHEMES)}")
    if TRIAL_CONFIG_TAG not in tags:
        raise TinyMemError(f"run {run_id!r} has no {TRIAL_CONFIG_TAG} tag: it is not a completed trial of a sweep "
                           f"(or of a sweep older than the tag)")
    try:
        config = json.loads(tags[TRIAL_CONFIG_TAG])
    except ValueError as e:
        raise TinyMemError(f"run {run_id!r}: tag {TRIAL_CONFIG_TAG} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or "method" not in config:
        raise TinyMemError(f"run {run_id!r}: tag {TRIAL_CONFIG_TAG} holds no trial config")
    return config
