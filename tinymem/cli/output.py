"""How the `tinymem` commands print results: as one JSON object (`print_json`) or a metric table (`print_metrics`)."""

from __future__ import annotations

import json
from typing import Any

from tinymem.util import json_safe


def print_json(obj: Any) -> None:
    """Print `obj` as indented JSON, NaN/inf written as null so every consumer can parse it."""
    print(json.dumps(json_safe(obj), indent=1, sort_keys=False))


def print_metrics(metrics: dict[str, Any], title: str = "metrics") -> None:
    """Print `title:` and one `name value` line per metric, sorted by name (floats to 4 decimals)."""
    print(f"{title}:")
    for k in sorted(metrics):
        v = metrics[k]
        print(f"  {k:28s} {v:10.4f}" if isinstance(v, float) else f"  {k:28s} {v}")


def format_rate(metrics: dict[str, Any], name: str) -> str:
    """`12.20 [5.1, 24.3] (5 of 41 rows)`: a memorization rate with its 95% interval and its row counts, or
    with the interval over seeds (`<name>_seeds_ci_*`) when the metrics are a mean over base-model seeds."""
    value = metrics.get(name, float("nan"))
    stem = name[: -len("_pct")] if name.endswith("_pct") else name
    if f"{name}_seeds_ci_low" in metrics:
        # a t-interval of a mean percentage can reach past the possible range with few seeds: show the
        # part that can hold (the raw bounds stay in the JSON)
        lo, hi = max(metrics[f"{name}_seeds_ci_low"], 0.0), min(metrics[f"{name}_seeds_ci_high"], 100.0)
        return f"{value:.2f} [{lo:.1f}, {hi:.1f}] (seed mean)"
    if f"{name}_ci_low" not in metrics:
        return f"{value:.3f}"
    rows = f" ({int(metrics[f'{stem}_rows'])} of {int(metrics[f'{stem}_counted'])} rows)" \
        if f"{stem}_rows" in metrics else ""
    return f"{value:.2f} [{metrics[f'{name}_ci_low']:.1f}, {metrics[f'{name}_ci_high']:.1f}]{rows}"
