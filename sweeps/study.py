"""A sweep's Optuna study, persisted: where it lives, opening it (new or reloaded), what each of its trials carries,
and settling it with the trial ledger after a crash.

Where: by default Optuna's journal file `<storage root>/optuna.journal` (one file for every sweep under the
root, one study per sweep, named `<experiment>-<sweep id>`); `--optuna-storage` takes another journal file
(a path) or an RDB URL (any SQLAlchemy URL Optuna's RDBStorage takes: `sqlite:///PATH.db`, a PostgreSQL server
shared by a team). Why a journal by default: the driver asks and tells the study for every trial, and an RDB
storage costs ~28 ms of driver CPU per trial on SQLite against ~3 ms for the journal and ~2 ms in memory
(docs/study.md), which is most of the driver's budget when trials are short. An object-store root (`s3://`,
`gs://`) cannot be appended to: the default is then under the local default root, as for MLflow's file, and a
driver resumed on another machine rebuilds the study from the ledger (below). `optuna-dashboard PATH_OR_URL`
and `optuna.load_study(study_name=..., storage=make_storage(PATH_OR_URL))` open a running or finished sweep.

What a trial carries: user attrs `ray_trial_id` (set when asked) and `mlflow_run_id` (read from the ledger
when told; absent if MLflow had not named the run yet), and with `--max-utility-loss X` the constraint
`max_utility_loss` = utility loss - X (feasible when <= 0), which TPE, NSGA-II and GP read. The study's user
attrs name the sweep, its objectives and their directions, and the constraint.

Reloading (`--resume`, or any open of an existing study) reads the study from storage; nothing is unpickled.
Trials left RUNNING by a dead driver are failed (user attr `closed`: the driver died), and every finished
ledger trial without a finished Optuna trial of its Ray trial id is told now, so each Ray trial ends up
told exactly once. A later per-epoch candidate goes in the same way, with `add_finished`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.errors import SweepError
from tinymem.store import DEFAULT_ROOT, is_uri

STUDY_FILE = "optuna.journal"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "oracle")  # SQLAlchemy dialects, `+driver` allowed
RAY_TRIAL, RUN_ID, CLOSED, STARTUP = "ray_trial_id", "mlflow_run_id", "closed", "startup"
CONSTRAINT = "max_utility_loss"


def default_storage(root: str) -> str:
    """`<root>/optuna.journal`, or under the local `DEFAULT_ROOT` when the root is an object store."""
    base = DEFAULT_ROOT if is_uri(root) else root
    return str(Path(base).expanduser().resolve() / STUDY_FILE)


def normalize(url: str) -> str:
    """A journal path made absolute (the record must not depend on the directory a resume runs in)."""
    return url if is_rdb(url) else str(Path(url).expanduser().resolve())


def is_rdb(url: str) -> bool:
    """An RDB URL (`scheme://...`); anything else names a journal file."""
    return "://" in url


def check_storage_url(url: str) -> None:
    """The form of `--optuna-storage` (no import, no connection): SweepError naming it and what is allowed."""
    scheme, sep, rest = url.partition("://")
    bad_rdb = sep and (scheme.split("+")[0].lower() not in RDB_SCHEMES or not rest.strip("/"))
    if bad_rdb or not url.strip() or url.endswith("/"):
        raise SweepError(f"bad --optuna-storage {url!r}; allowed: a journal file PATH (default "
                         f"<storage>/{STUDY_FILE}) or an RDB URL such as sqlite:///PATH.db or "
                         f"postgresql://USER@HOST/DB (dialects {list(RDB_SCHEMES)})")


def make_storage(url: str) -> Any:
    """The Optuna storage of `--optuna-storage`: a journal file (its directory made) or an RDB storage."""
    import optuna

    if is_rdb(url):
        path = sqlite_path(url)
        if path is not None:  # a root is made when first written to
            path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend

    path = Path(url).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def check_storage(url: str) -> None:
    """Fail before any trial if the study's storage cannot be used: a SQLite file whose directory cannot be
    made or written (nothing is created here: the study makes its file when it opens), a server that cannot be
    reached or whose driver is missing."""
    check_storage_url(url)
    path = sqlite_path(url) if is_rdb(url) else Path(url).expanduser()
    if path is not None:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if existing == path:
            if path.is_file():
                return
            raise SweepError(f"--optuna-storage {url!r}: {path} is a directory; allowed: a file path")
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise SweepError(f"--optuna-storage {url!r}: {existing} is not a writable directory")
        return
    import sqlalchemy

    try:
        sqlalchemy.create_engine(url).connect().close()
    except Exception as e:  # a missing driver, a refused connection, bad credentials
        raise SweepError(f"--optuna-storage {url!r} is unusable ({type(e).__name__}: {str(e)[:200]})") from None


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///PATH` URL (the third slash starts the path), or None for a server URL."""
    return Path(url.split("://", 1)[1][1:]) if url.split("+")[0].startswith("sqlite:") else None


@dataclass(frozen=True)
class StudySpec:
    """What names a sweep's study and what its trials are told against (plain values: saved with the searcher)."""

    url: str
    name: str
    objectives: tuple[str, ...]
    sweep_id: str = ""
    loss_name: str = ""  # the utility objective the constraint bounds
    max_loss: float | None = None  # --max-utility-loss; None: unconstrained

    def constraint(self, values: dict[str, Any]) -> float | None:
        """utility loss - X (<= 0: feasible), or None without a constraint or a finite loss."""
        loss = values.get(self.loss_name)
        if self.max_loss is None or loss is None or not math.isfinite(float(loss)):
            return None
        return float(loss) - self.max_loss


def open_study(spec: StudySpec, make_sampler: Callable[[int], Any], points: list[tuple[dict[str, Any], str]]
               ) -> Any:
    """The sweep's study: created, its first trials enqueued (`points`: config and what it is, user attr
    `startup`), or reloaded from storage and closed up (nothing enqueued again).

    `make_sampler(n)` builds the sampler for a study that already holds n trials (0: a new one).
    """
    import optuna

    storage = make_storage(spec.url)
    try:
        held = storage.get_n_trials(storage.get_study_id_from_name(spec.name))
    except KeyError:  # no such study yet
        held = None
    if held is not None:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(held))
        close_running(study)
        return study
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=make_sampler(0),
                                directions=["minimize"] * len(spec.objectives))
    with warnings.catch_warnings():  # experimental in Optuna 5; it is what optuna-dashboard shows as axis names
        warnings.simplefilter("ignore")
        study.set_metric_names(list(spec.objectives))
    for key, value in {"sweep_id": spec.sweep_id, "objectives": list(spec.objectives),
                       "directions": ["minimize"] * len(spec.objectives), "utility_loss": spec.loss_name,
                       CONSTRAINT: spec.max_loss}.items():
        study.set_user_attr(key, value)
    for point, label in points:
        study.enqueue_trial(point, user_attrs={STARTUP: label})
    return study


def close_running(study: Any, why: str = "the driver died while the trial ran") -> int:
    """Fail the trials left RUNNING, by a dead driver (this process has asked none yet) or by a time budget that
    ended the sweep before they started (`sweeps.budget`), `why` in their `closed` attribute; their count."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        # A finished trial takes no attribute, so the mark goes first (storage API: a FrozenTrial has no setter).
        study._storage.set_trial_user_attr(t._trial_id, CLOSED, why)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return len(running)


def told_ray_ids(study: Any) -> set[str]:
    """Ray trial ids that have a finished Optuna trial of their own (a trial closed on reload is not one)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return {str(t.user_attrs[RAY_TRIAL]) for t in study.get_trials(deepcopy=False, states=done)
            if RAY_TRIAL in t.user_attrs and CLOSED not in t.user_attrs}


def outcome(result: dict[str, Any] | None, objectives: tuple[str, ...] | list[str], *, error: bool = False,
            early_stopped: bool = False) -> tuple[Any, list[float] | None]:
    """(Optuna state, values) of a trial's last result: COMPLETE with finite final objectives; FAIL if it
    failed (an exception, a `failed` report, a NaN objective); otherwise PRUNED (stopped early: Ray hands an
    early-stopped trial's last per-epoch result, whose truncated metrics must not steer the sampler)."""
    from optuna.trial import TrialState

    result = result or {}
    if error or result.get("failed"):
        return TrialState.FAIL, None
    if early_stopped or not result.get("final"):
        return TrialState.PRUNED, None
    try:
        values = [float(result[m]) for m in objectives]
    except (KeyError, TypeError, ValueError):
        return TrialState.FAIL, None
    return (TrialState.COMPLETE, values) if all(map(math.isfinite, values)) else (TrialState.FAIL, None)


def tell(study: Any, spec: StudySpec, trial: Any, state: Any, values: list[float] | None, result: dict[str, Any],
         run_id: str | None) -> None:
    """Tell a live (asked) trial its outcome, with its MLflow run id and, when complete, its constraint."""
    from optuna.trial import TrialState

    if run_id:
        trial.set_user_attr(RUN_ID, run_id)
    bound = spec.constraint(result) if state == TrialState.COMPLETE else None
    if bound is not None:
        trial.set_constraint(CONSTRAINT, bound)
    study.tell(trial, values, state=state)


def add_finished(study: Any, spec: StudySpec, space: Callable[[Any], Any], ray_id: str, config: dict[str, Any],
                 state: Any, values: list[float] | None, result: dict[str, Any], run_id: str | None) -> None:
    """Add a trial that finished without a live Optuna trial (told after a crash, or a per-epoch candidate)."""
    import optuna
    from optuna.trial import TrialState

    fixed = optuna.trial.FixedTrial(config)
    space(fixed)  # define-by-run: records the distributions of the config's values
    bound = spec.constraint(result) if state == TrialState.COMPLETE else None
    study.add_trial(optuna.trial.create_trial(
        params=fixed.params, distributions=fixed.distributions, values=values, state=state,
        user_attrs={RAY_TRIAL: ray_id, **({RUN_ID: run_id} if run_id else {})},
        constraints={CONSTRAINT: bound} if bound is not None else None))


def catch_up(study: Any, spec: StudySpec, space: Callable[[Any], Any], ledger: dict[str, dict[str, Any]]) -> int:
    """Tell the study every finished ledger trial it has no finished trial of (in the ledger's order); the
    count told."""
    told, n = told_ray_ids(study), 0
    for ray_id, entry in ledger.items():
        if ray_id in told or entry.get("state") not in ("completed", "failed", "early_stopped") \
                or "config" not in entry:
            continue
        result = entry.get("result") or {}
        state, values = outcome(result, spec.objectives, error=entry["state"] == "failed",
                                early_stopped=entry["state"] == "early_stopped")
        add_finished(study, spec, space, ray_id, entry["config"], state, values, result, entry.get("run_id"))
        n += 1
    return n
