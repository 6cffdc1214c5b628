"""The MLflow tag names of a sweep, defined once: TinyMem's own under `tinymem.`, MLflow's system tags beside them.

Custom tags live in the `tinymem.` namespace so that they never collide with a user's or another tool's
tags (MLflow reserves `mlflow.`). Sweeps logged before the namespace carry the same tags without the prefix
(`state`, `pareto`, ...): `read` falls back to those, so such a sweep still reads back and resumes.

A dotted key must be quoted in MLflow's search syntax: `PARETO_FILTER` is the filter that shows the front
(the same string works in `MlflowClient.search_runs` and in the MLflow UI's search box).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from tinymem.store import TRIAL_CONFIG_TAG

PREFIX = "tinymem."

# Parent run (the sweep).
ROLE = "tinymem.role"  # "sweep" on the parent run
SWEEP_ID = "tinymem.sweep_id"
SWEEP = "tinymem.sweep"  # JSON: task kind, objectives, methods, presets, searched hyperparameters
BASE = "tinymem.base"  # JSON: base-model metrics per preset
BASE_KEYS = "tinymem.base_keys"  # JSON: model-store key per preset
RESUMED = "tinymem.resumed"  # unix time of the latest --resume
TIME_BUDGET = "tinymem.time_budget_s"  # on a parent its --time-budget ended: the budget in seconds

# Child runs (one per trial); STATE is also the parent's (running | finished | interrupted).
TRIAL_ID = "tinymem.trial_id"
STATE = "tinymem.state"  # running | completed | failed | early_stopped
PARETO = "tinymem.pareto"  # "true" on the front's runs, "false" on the others
FEASIBLE = "tinymem.feasible"  # with --max-utility-loss: "true" when the trial's utility loss is within it
PARETO_CHECKPOINTS = "tinymem.pareto_checkpoints"  # epochs of the run's anytime candidates on the front, "1,3"
PAPER_RULE_BEST = "tinymem.paper_rule_best"  # "true" on the paper's scalar rule's pick
METHOD = "tinymem.method"
PRESET = "tinymem.preset"
ERROR = "tinymem.error"
RETRIES = "tinymem.retries"
LAST_ERROR = "tinymem.last_error"
EARLY_STOPPED_AT_EPOCH = "tinymem.early_stopped_at_epoch"
TRIAL_CONFIG = TRIAL_CONFIG_TAG  # JSON: the trial's config, what `tinymem mitigate --from-run` rebuilds from
MODEL_DIR = "tinymem.model_dir"  # where the trial's kept model directory is
MODEL_ID = "tinymem.model_id"  # its MLflow logged model
# Where a trial runs: result field (Ray's `hostname` / `node_ip`, the trainable's `ray_node_id`) -> tag.
WHERE = {"ray_node_id": "tinymem.ray_node_id", "hostname": "tinymem.hostname", "node_ip": "tinymem.node_ip"}

PARETO_FILTER = f"tags.\"{PARETO}\" = 'true'"


def read(tags: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """Tag `name` of a run; for a run logged before the `tinymem.` namespace, its bare predecessor."""
    if name in tags:
        return tags[name]
    if name.startswith(PREFIX):
        return tags.get(name[len(PREFIX):], default)
    return default


def system_tags(entry_script: str | None = None) -> dict[str, str]:
    """MLflow's system tags for a run started from `entry_script` (default: this process's `sys.argv[0]`, as
    MLflow itself takes it): `mlflow.user`, `mlflow.source.name`, `mlflow.source.type` and, inside a git
    checkout, `mlflow.source.git.commit` / `.branch` / `.repoURL`.

    `MlflowClient.create_run` sets none of them (only the fluent `mlflow.start_run` does), so the driver
    resolves them once, with MLflow's own context providers, and puts them on every run of the sweep.
    """
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

    entry = entry_script or (sys.argv[0] if sys.argv and sys.argv[0] else None)
    # Git is resolved below from the entry script; MLflow's provider would use sys.argv[0] whatever we pass.
    tags = resolve_tags(ignore=[GitRunContext])
    if entry is None:
        return tags
    tags[MLFLOW_SOURCE_NAME] = entry
    git = {MLFLOW_GIT_COMMIT: git_utils.get_git_commit(entry), MLFLOW_GIT_BRANCH: git_utils.get_git_branch(entry),
           MLFLOW_GIT_REPO_URL: git_utils.get_git_repo_url(entry)}
    if git[MLFLOW_GIT_COMMIT]:
        tags.update({k: v for k, v in git.items() if v})
    return tags
