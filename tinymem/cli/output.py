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
