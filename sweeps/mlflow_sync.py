"""MLflow written from the trial ledger, apart from the driver: what a sweep logs survives an MLflow outage.

The driver only appends trial events to the ledger (`sweeps.ledger`, on disk first) and hands them on; a
`LedgerSync` turns them into MLflow calls, trial by trial in ledger order. When MLflow is unreachable the
events wait (they are on disk already) and the same event is retried with back-off, so trials go on being
scheduled and finishing during an outage and are written, in order, once the server is back. If the sweep
ends first, `python sweeps/report.py --sync` or the next `--resume` replays what is left.

Replaying is safe because every call is idempotent: params and tags are set to the same values, metrics carry
the step and timestamp recorded in their event (MLflow stores an identical metric once), closing a run twice
closes it once. The one call that is not, creating a run, is recorded in the writer's own ledger
(`SYNC_LEDGER`: trial id -> run id, and `logged` when the trial is all in MLflow), and `recover` adopts a run
that was created but never recorded (found by its trial-id tag) and deletes any second run of a trial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sweeps import tags as T
from sweeps.inputs import log_data_inputs
from sweeps.ledger import SYNC_LEDGER, TrialLedger
from sweeps.mlflow_io import RUN_STATUS, batch_log, metric_entities, mlflow_client

log = logging.getLogger("sweeps")

# MLflow error codes that no retry can fix (the call itself is wrong, e.g. a run deleted by hand): the event is
# skipped with a warning. Anything else (connection refused, timeouts, 5xx, a locked SQLite file) is retried.
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
             "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"}
# Waits between attempts while MLflow is down, then every 10 s: a server that is back is seen within 10 s, at the
# cost of one failed request per 10 s while it is not.
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 10.0)


@dataclass
class SyncContext:
    """Where a sweep's trials go in MLflow: the same for every trial, so kept out of the ledger's events."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_dir: str
    system_tags: dict[str, str] = field(default_factory=dict)  # `sweeps.tags.system_tags`, resolved by the driver
    data_inputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # preset -> `sweeps.inputs` specs


def is_permanent(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in PERMANENT


class LedgerSync:
    """Applies a sweep's trial events to MLflow. `recover` first (once per process), then `apply` each event,
    or `replay` to bring every trial that MLflow lacks up to date from the ledger alone."""

    def __init__(self, ctx: SyncContext, client: Any = None, say: Callable[[str], None] | None = None):
        self.ctx = ctx
        self.client = client or mlflow_client(ctx.tracking_uri)
        self.say = say or (lambda line: log.warning("%s", line))
        self.ledger = TrialLedger(ctx.sweep_dir)
        self.progress = TrialLedger(ctx.sweep_dir, SYNC_LEDGER)
        self._where: dict[str, dict[str, str]] = {}  # trial id -> its where-tags as last set
        self.applied = 0
        self.skipped = 0

    # -- state

    def run_id(self, trial_id: str) -> str | None:
        mine = self.progress.get(trial_id) or {}
        return mine.get("run_id") or (self.ledger.get(trial_id) or {}).get("run_id")  # or an older sweep's ledger

    def logged(self, trial_id: str) -> bool:
        return bool((self.progress.get(trial_id) or {}).get("logged") or (self.ledger.get(trial_id) or {}).get("logged"))

    def pending(self) -> list[str]:
        """Trials of the ledger that MLflow does not hold completely yet, in ledger order."""
        return [t for t in self.ledger.trials if not self.logged(t)]

    # -- recovery

    def children(self) -> dict[str, list[Any]]:
        """trial id -> the sweep's child runs tagged with it, oldest first."""
        out: dict[str, list[Any]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.ctx.experiment_id], max_results=1000, page_token=token,
                                           filter_string=f"tags.mlflow.parentRunId = '{self.ctx.parent_run_id}'")
            for run in page:
                out.setdefault(T.read(run.data.tags, T.TRIAL_ID, "") or "", []).append(run)
            token = page.token
            if not token:
                break
        for runs in out.values():
            runs.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
        return out

    def recover(self) -> int:
        """Give every ledger trial at most one run: adopt a run made for it but never recorded, delete second
        runs of a trial (a dead writer's, or a create call retried after the server had made the run).
        Returns how many runs were deleted."""
        deleted = 0
        for trial_id, runs in self.children().items():
            if trial_id not in self.ledger.trials:
                continue  # not this sweep's ledger's: leave it
            keep = self.run_id(trial_id)
            if keep is None and runs:
                keep = runs[0].info.run_id
                self.progress.append(trial_id, "run", run_id=keep, adopted=True)
            for run in runs:
                if run.info.run_id != keep:
                    self.client.delete_run(run.info.run_id)
                    deleted += 1
        return deleted

    def replay_events(self) -> list[dict[str, Any]]:
        """Every event of every trial MLflow does not hold completely, in ledger order (applying them again is
        harmless)."""
        return [event for trial_id in self.pending() for event in self.ledger.history(trial_id)]

    # -- events

    def fold(self, event: dict[str, Any]) -> None:
        """Take in an event that the driver appended after this process read the ledger."""
        trial_id = str(event["trial_id"])
        self.ledger.trials.setdefault(trial_id, {}).update(
            {k: v for k, v in event.items() if k not in ("trial_id", "event", "at")})
        self.ledger._history.setdefault(trial_id, []).append(event)

    def apply(self, event: dict[str, Any]) -> None:
        """Make MLflow hold `event` (a ledger event: `trial_id`, `event`, fields)."""
        self.apply_trial(str(event["trial_id"]), [event])

    def apply_trial(self, trial_id: str, events: list[dict[str, Any]]) -> None:
        """Make MLflow hold consecutive events of one trial, merged into the fewest calls: a writer that lags
        behind (an outage, a busy machine) writes a whole trial as one run creation, one batch and one close."""
        if self.logged(trial_id):
            return  # all in MLflow already (a replay overlapping the driver's stream)
        w = _Write()
        for event in events:
            handler = getattr(self, f"_on_{event['event']}", None)
            if handler is not None:
                handler(trial_id, event, w)
        if w.rid is None and (w.metrics or w.tags or w.params or w.close):
            w.rid = self._run(trial_id)
        if w.rid is not None:
            batch_log(self.client, w.rid, metrics=w.metrics, tags=w.tags, params=w.params)
            log_data_inputs(self.client, w.rid, w.inputs)
            if w.close is not None:
                status, at = w.close
                self.client.set_terminated(w.rid, status=status, end_time=int(at * 1000) if at else None)
        if w.close is not None:
            self.progress.append(trial_id, "logged", logged=True)
        self.applied += len(events)

    def _run(self, trial_id: str) -> str:
        """The trial's run, made now if the writer never saw its `created` (a ledger written before it)."""
        rid = self.run_id(trial_id)
        if rid is None:
            rid = self._create(trial_id, {**(self.ledger.get(trial_id) or {}), "trial_id": trial_id})
        return rid

    def _create(self, trial_id: str, event: dict[str, Any]) -> str:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        method, preset = event.get("method", ""), event.get("preset", "")
        run = self.client.create_run(
            self.ctx.experiment_id, run_name=event.get("run_name") or f"{method}-{trial_id}",
            start_time=event.get("start_ms"),
            tags={**self.ctx.system_tags, MLFLOW_PARENT_RUN_ID: self.ctx.parent_run_id, T.TRIAL_ID: trial_id,
                  T.METHOD: method, T.PRESET: preset, T.STATE: "running", T.PARETO: "false"})
        self.progress.append(trial_id, "run", run_id=run.info.run_id)
        return run.info.run_id

    # -- what each event adds to the trial's write

    def _on_created(self, trial_id: str, event: dict[str, Any], w: "_Write") -> None:
        w.rid = self.run_id(trial_id) or self._create(trial_id, event)
        if "params" in event:  # an older ledger's trial had its run made and logged when it started
            w.params.update({"method": event.get("method", ""), "preset": event.get("preset", ""),
                             **event["params"]})
            w.inputs = self.ctx.data_inputs.get(event.get("preset", ""), [])

    def _on_state(self, trial_id: str, event: dict[str, Any], w: "_Write") -> None:
        w.rid = self._run(trial_id)
        self.client.update_run(w.rid, status="RUNNING")
        w.tags.update({T.STATE: "running", **({T.RESUMED: event["resumed"]} if event.get("resumed") else {})})

    def _result_tags(self, trial_id: str, result: dict[str, Any], ray_where: dict[str, Any] | None = None
                     ) -> dict[str, str]:
        tags = {}
        seen = {**(ray_where or {}), **result}  # Ray's node_ip / hostname, the trainable's ray_node_id
        where = {tag: str(seen[k]) for k, tag in T.WHERE.items() if seen.get(k)}
        if where and self._where.get(trial_id) != where:  # a retried trial may move to another node
            tags.update(where)
            self._where[trial_id] = where
        if result.get("trial_config"):  # the rebuild config: `tinymem mitigate --from-run` reads it
            tags[T.TRIAL_CONFIG] = result["trial_config"]
        return tags

    def _on_result(self, trial_id: str, event: dict[str, Any], w: "_Write") -> None:
        result = event.get("epoch_result") or {}
        w.metrics += metric_entities(result, int(event.get("step") or 0), int(event["at_ms"]))
        w.tags.update(self._result_tags(trial_id, result, event.get("where")))

    def _on_retry(self, trial_id: str, event: dict[str, Any], w: "_Write") -> None:
        w.tags.update({T.RETRIES: str(event.get("retries", "")), T.LAST_ERROR: str(event.get("last_error", ""))})

    def _on_finished(self, trial_id: str, event: dict[str, Any], w: "_Write") -> None:
        result, state = event.get("result") or {}, event["state"]
        if event.get("result_ms") is not None:  # the final report: its metrics with the stamp it was given
            w.metrics += metric_entities(result, int(result.get("epoch") or 0), int(event["result_ms"]))
            w.tags.update(self._result_tags(trial_id, result, event.get("where")))
        w.tags[T.STATE] = state
        if state == "failed":
            w.tags[T.ERROR] = str(event.get("error") or result.get("error") or "unknown error")[:8000]
        elif state == "early_stopped":
            w.tags[T.EARLY_STOPPED_AT_EPOCH] = str(result.get("epoch", ""))
        w.close = (RUN_STATUS[state], event.get("at"))

    def _on_lost(self, trial_id: str, event: dict[str, Any], w: "_Write") -> None:
        if self.run_id(trial_id) is None and w.rid is None:  # never reached MLflow: nothing to close
            self.progress.append(trial_id, "logged", logged=True)
            return
        w.tags.update({T.STATE: "failed", T.ERROR: str(event.get("error", "lost"))[:8000]})
        w.close = ("FAILED", event.get("at"))


@dataclass
class _Write:
    """What a trial's events add up to in MLflow (`LedgerSync.apply_trial`)."""

    rid: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    close: tuple[str, float | None] | None = None  # the MLflow status to end the run with, and when


def by_trial(events: Iterable[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Events grouped per trial, trials in the order they first appear, each trial's events in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        out.setdefault(str(event["trial_id"]), []).append(event)
    return list(out.items())


Deadline = Callable[[], "float | None"]  # the current deadline (time.monotonic) or None; it may move while waiting


def with_retry(sync: LedgerSync, steps: Iterable[Callable[[], Any]], deadline: Deadline = lambda: None,
               on_down: Callable[[BaseException], None] | None = None,
               on_up: Callable[[float], None] | None = None) -> bool:
    """Run `steps` (MLflow calls) in order, retrying each with back-off while MLflow is unreachable, skipping one
    that MLflow refuses for good (`PERMANENT`); False if `deadline()` came first, leaving the rest for a later
    replay."""
    for step in steps:
        attempt, down_since = 0, None
        while True:
            try:
                step()
                break
            except Exception as exc:  # noqa: BLE001 - classified below; the events are safe on disk
                if is_permanent(exc):
                    sync.skipped += 1
                    sync.say(f"tracking: MLflow refused a call ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); skipped")
                    break
                if down_since is None:
                    down_since = time.monotonic()
                    if on_down:
                        on_down(exc)
                wait = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                end = deadline()
                if end is not None and time.monotonic() + wait > end:
                    return False
                time.sleep(wait)
        if down_since is not None and on_up:
            on_up(time.monotonic() - down_since)
    return True


def sync_all(sync: LedgerSync, deadline: Deadline = lambda: None, **hooks: Any) -> bool:
    """Recover, then replay everything MLflow lacks (`report.py --sync`, a resumed driver's writer); True when
    MLflow holds the whole ledger."""
    if not with_retry(sync, [sync.recover], deadline, **hooks):
        return False
    groups = by_trial(sync.replay_events())
    return with_retry(sync, [lambda t=t, evs=evs: sync.apply_trial(t, evs) for t, evs in groups], deadline, **hooks)
