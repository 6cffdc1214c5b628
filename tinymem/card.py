"""The model card of a mitigated model directory (`README.md`), and the `tinymem mitigate` command that rebuilds it.

A card is what someone who receives the directory reads first: the base model, the method and every
hyperparameter, the metrics before and after (memorization with its 95% interval and row counts, utility on
the val and test halves), and the exact command that reproduces the directory. Its YAML front matter follows
the Hugging Face model-card convention (`library_name`, `tags`, `base_model` for hub models), so the hub and
tools that read cards understand it.

Both work on the plain dict form of a trial config (`tinymem.trial.TrialConfig.to_dict`), so this module sits
below the trial layer and the sweeps can print the same commands for the members of a Pareto front.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from typing import Any

from tinymem.hf.options import HFSourceOptions
from tinymem.presets import DEFAULT_PRESET
from tinymem.store import DEFAULT_ROOT

CARD = "README.md"
RATES = ("mem_pct", "paper_mem_pct", "heldout_mem_pct", "backdoor_asr_pct")
UTILITY = ("val_acc", "test_acc", "val_ppl", "test_ppl", "clean_recovered_pct", "token_match")


def cli_value(value: Any) -> str:
    """A config value as `--set k=VALUE` text that the CLI reads back to the same value: floats in their shortest
    exact form (`repr`), booleans as true/false, tuples as comma lists, None as none."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(cli_value(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def mitigate_argv(config: Mapping[str, Any], out_dir: str) -> list[str]:
    """The `tinymem mitigate` arguments that rerun the trial of `config` (a `TrialConfig.to_dict()`) and save its
    model to `out_dir`: base model (preset + `--spec-set`, model directory or `hf:` model with its options),
    method, every hyperparameter, seed, root, heldout fraction, device if not auto."""
    argv = ["tinymem", "mitigate", "--method", str(config["method"])]
    if config.get("model"):
        argv += ["--model", str(config["model"])]
        source = HFSourceOptions.from_object(dict(config))
        for name, value in source.given().items():
            argv += [f"--{name.replace('_', '-')}", cli_value(value)]
    elif config.get("model_dir"):
        argv += ["--model", str(config["model_dir"])]
    else:
        argv += ["--preset", str(config.get("preset") or DEFAULT_PRESET)]
        for key, value in (config.get("set") or {}).items():
            argv += ["--spec-set", f"{key}={cli_value(value)}"]
    for name, value in (config.get("params") or {}).items():
        argv += ["--set", f"{name}={cli_value(value)}"]
    argv += ["--seed", str(int(config.get("seed", 0)))]
    if config.get("heldout_frac"):
        argv += ["--heldout-frac", cli_value(float(config["heldout_frac"]))]
    if config.get("device") not in (None, "", "auto"):
        argv += ["--device", str(config["device"])]
    argv += ["--root", str(config.get("storage") or DEFAULT_ROOT), "--out", str(out_dir)]
    return argv


def mitigate_command(config: Mapping[str, Any], out_dir: str) -> str:
    """`mitigate_argv` as one shell-quoted line."""
    return shlex.join(mitigate_argv(config, out_dir))


def base_name(config: Mapping[str, Any]) -> str:
    """How the card names the base model: the `hf:` source, the model directory, or the preset."""
    return str(config.get("model") or config.get("model_dir") or config.get("preset") or DEFAULT_PRESET)


def _number(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    return "n/a" if math.isnan(value) else f"{value:.4g}"


def _rate(metrics: Mapping[str, Any], name: str) -> str:
    """`66.67 [54.3, 77.6] (40 of 60 rows)`: a rate with its interval and row counts, where they exist."""
    if name not in metrics:
        return "n/a"
    text = f"{metrics[name]:.2f}"
    if f"{name}_ci_low" in metrics:
        text += f" [{metrics[f'{name}_ci_low']:.1f}, {metrics[f'{name}_ci_high']:.1f}]"
    stem = name[: -len("_pct")] if name.endswith("_pct") else name
    if f"{stem}_rows" in metrics and f"{stem}_counted" in metrics:
        text += f" ({int(metrics[f'{stem}_rows'])} of {int(metrics[f'{stem}_counted'])} rows)"
    return text


def render_card(config: Mapping[str, Any], *, method: str, params: Mapping[str, Any], key: str, base_key: str,
                before: Mapping[str, Any], after: Mapping[str, Any], out_dir: str,
                family: str = "", tokenizer: bool = True) -> str:
    """The `README.md` of a mitigated model directory (see the module docstring)."""
    base = base_name(config)
    tags = ["tinymem", "memorization", "unlearning", method] + ([family] if family else [])
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    front += [f"- {t}" for t in dict.fromkeys(tags)]
    hub_name = str(config.get("model") or "")[len("hf:"):].split("@")[0]
    if hub_name and not hub_name.startswith(("/", ".", "~")):  # base_model names a hub model, never a local path
        front.append(f"base_model: {hub_name}")
    front.append("---")
    if config.get("model"):
        where = f"the Hugging Face model `{base}`"
    elif config.get("model_dir"):
        where = f"the model directory `{base}` (base key `{base_key}`)"
    else:
        overrides = ", ".join(f"{k}={cli_value(v)}" for k, v in (config.get("set") or {}).items())
        where = f"the TinyMem preset `{base}`" + (f" with {overrides}" if overrides else "") + \
            f" (spec key `{base_key}`)"
    lines = front + ["", f"# {method} on {base}", "",
                     f"A causal language model from which memorized sequences were removed with the TinyMem "
                     f"mitigation method `{method}`, applied to {where}. Model key `{key}`.", "",
                     "## Hyperparameters", "", "| name | value |", "|---|---|"]
    lines += [f"| `{k}` | `{cli_value(v)}` |" for k, v in params.items()]
    lines += ["", f"Seed {int(config.get('seed', 0))}"
              + (f"; {config['heldout_frac']} of the unlearning set withheld from the method (heldout_mem_pct)"
                 if config.get("heldout_frac") else "") + ".", "",
              "## Metrics", "",
              "Memorization rates are percentages with their exact 95% interval and row counts; accuracy is "
              "next-token accuracy with padding masked; `val` and `test` are the two halves of the held-out sets "
              "(sweeps select on `val`).", "", "| metric | base model | this model |", "|---|---|---|"]
    lines += [f"| `{k}` | {_rate(before, k)} | {_rate(after, k)} |" for k in RATES if k in after]
    lines += [f"| `{k}` | {_number(before.get(k))} | {_number(after[k])} |" for k in UTILITY if k in after]
    lines += ["", "## Reproduce", "", "```bash", mitigate_command(config, out_dir), "```", "",
              "## Load", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"model = AutoModelForCausalLM.from_pretrained({out_dir!r})",
              *([f"tokenizer = AutoTokenizer.from_pretrained({out_dir!r})"] if tokenizer else []), "```", ""]
    return "\n".join(lines)
