"""The base models' data as MLflow run inputs: forget, retain, val and test, each an MLflow `Dataset` with a digest.

The digests come from the tensors themselves (`DataBundle.digests`, computed once per base model in its Ray
task, `sweeps.bases`), so the same data always gets the same digest and MLflow stores each dataset once per
experiment: every trial on a base model, and the sweep's parent run, name the same four datasets. The input
tag `mlflow.data.context` says which split a dataset is.

What travels from the driver to the logger are plain dicts (`dataset_specs`): they are pickled with the
Tune experiment and kept in the sweep record; MLflow's entities are built only when logging.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinymem.hf.options import HFSourceOptions, is_hf_source
from tinymem.store import ModelStore

# MLflow keeps at most 36 characters of a digest (its own are 8); 16 hex digits of the sha256 suffice here.
DIGEST_CHARS = 16


def _source(preset: str, key: str, storage_root: str, options: HFSourceOptions, split: str) -> str:
    """Where the split's rows come from: the base model's `data.safetensors` in the model store, or, for an `hf:`
    model, the memorized-sequence / clean-text file it was read from."""
    if is_hf_source(preset):
        files = {"forget": options.forget_file, "retain": options.retain_file,
                 "val": options.test_file or options.retain_file, "test": options.test_file or options.retain_file}
        path = files.get(split)
        return str(Path(path).resolve()) if path else preset
    return f"{ModelStore(storage_root).entry_uri(key)}/data.safetensors"


def _schema(split: dict[str, Any]) -> str:
    """MLflow's tensor-dataset schema (what `mlflow.data.from_numpy` writes): one int token tensor per row."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types.schema import Schema, TensorSpec

    spec = TensorSpec(np.dtype(split["dtype"]), (-1, *split["shape"][1:]), name="tokens")
    return json.dumps(TensorDatasetSchema(features=Schema([spec])).to_dict())


def dataset_specs(bases: dict[str, dict[str, Any]], storage_root: str,
                  options: HFSourceOptions | None = None) -> dict[str, list[dict[str, Any]]]:
    """preset -> the datasets of its base model(s) (one set per base-model seed with --repeats), as dicts with
    the `Dataset` fields and the split as `context`. A base without recorded data (a sweep record written
    before inputs were logged) has none."""
    options = options or HFSourceOptions()
    out: dict[str, list[dict[str, Any]]] = {}
    for preset, base in bases.items():
        specs = []
        per_seed = base.get("data") or []
        for entry in per_seed:
            seed = entry.get("seed")
            prefix = f"{preset}/seed{seed}" if len(per_seed) > 1 and seed is not None else preset
            for split, info in entry["splits"].items():
                profile = {"num_rows": info["shape"][0], "features_shape": info["shape"], "tensors": info["tensors"]}
                specs.append({"name": f"{prefix}/{split}", "digest": info["digest"][:DIGEST_CHARS],
                              "source_type": "local",
                              "source": json.dumps({"uri": _source(preset, entry["key"], storage_root, options,
                                                                   split)}),
                              "schema": _schema(info), "profile": json.dumps(profile), "context": split})
        out[preset] = specs
    return out


def log_data_inputs(client: Any, run_id: str, specs: list[dict[str, Any]]) -> None:
    """Log `specs` (from `dataset_specs`) as the run's inputs, each tagged with its `mlflow.data.context`."""
    if not specs:
        return
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client.log_inputs(run_id, datasets=[
        DatasetInput(Dataset(name=s["name"], digest=s["digest"], source_type=s["source_type"], source=s["source"],
                             schema=s["schema"], profile=s["profile"]),
                     tags=[InputTag(MLFLOW_DATASET_CONTEXT, s["context"])])
        for s in specs])
