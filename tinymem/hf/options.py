"""The options that name a Hugging Face base model and its memorized-sequence files, as one value.

The CLI (`tinymem mitigate/eval --model hf:...`), `run_trial` and the sweeps all take these same options;
this dataclass is their one list. Torch-free, so command lines can build their parsers without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tinymem.errors import ConfigError

HF_PREFIX = "hf:"


def is_hf_source(value: Any) -> bool:
    """Whether `value` is an `hf:` model source (as opposed to a TinyMem preset or model directory)."""
    return isinstance(value, str) and value.startswith(HF_PREFIX)


@dataclass(frozen=True)
class HFSourceOptions:
    """How a Hugging Face model is loaded and what its memorized-sequence data are (None: the default).

    `model` is the source `hf:NAME_OR_PATH[@REVISION]`; the others are its options (`tinymem.memfile` reads
    the files and the metric window).
    """

    model: str | None = None
    dtype: str | None = None  # float32 | bfloat16 | float16 (default float32)
    forget_file: str | None = None  # memorized sequences (the unlearning set)
    retain_file: str | None = None  # clean data for retain (and perplexity without test_file)
    test_file: str | None = None  # clean data for perplexity
    metric_preset: str | None = None  # pythia | biderman | carlini (default pythia)
    prompt_len: int | None = None
    k: int | None = None
    seq_len: int | None = None

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The options besides `model` (CLI flags `--dtype`, `--forget-file`, ...)."""
        return tuple(f.name for f in fields(cls) if f.name != "model")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every field name: the trial-config keys of a Hugging Face base model."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_object(cls, obj: Any, model: str | None = None) -> "HFSourceOptions":
        """Read the fields from a mapping or from attributes (an argparse namespace, sweep options).
        `model` overrides the object's own `model` (a CLI's `--model` may also name a model directory)."""
        get = obj.get if isinstance(obj, dict) else (lambda k, d=None: getattr(obj, k, d))
        values = {k: get(k, None) for k in cls.option_names()}
        return cls(model=model if model is not None else get("model", None), **values)

    def given(self) -> dict[str, Any]:
        """The options (not `model`) that were set."""
        return {k: v for k, v in asdict(self).items() if k != "model" and v is not None}

    def as_config(self) -> dict[str, Any]:
        """The set fields, `model` included: the base-model part of a trial config."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def data_options(self) -> dict[str, Any]:
        """What `tinymem.memfile` takes: the files and the metric window (all, None where unset)."""
        return {k: getattr(self, k) for k in self.option_names() if k != "dtype"}

    def reject(self, where: str | None) -> None:
        """The options mean nothing without an `hf:` model: say so instead of ignoring them.
        `where` names what the base model was instead (a model directory), None for a preset."""
        given = list(self.given())
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ConfigError(f"{flags} apply to Hugging Face models only (--model hf:NAME_OR_PATH); "
                              f"got {'--model ' + where if where else 'a preset'}")


# Written out (a test checks it against tinymem.memfile.METRIC_PRESETS) so that building a parser does not
# import torch: `--help` stays fast.
METRIC_HELP = ("memorization metric, as prompt + tokens that must match exactly of the row length: pythia "
               "(32 + 40 of 80; the paper's), biderman (32 + 32 of 64), carlini (50 + 50 of 100) (default pythia)")


def add_metric_arguments(p: Any) -> None:
    """`--metric-preset`, `--prompt-len`, `--k`, `--seq-len` on an argparse parser or group."""
    p.add_argument("--metric-preset", default=None, help=METRIC_HELP)
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (overrides the preset)")
    p.add_argument("--k", type=int, default=None, help="continuation tokens that must match exactly (overrides)")
    p.add_argument("--seq-len", type=int, default=None, help="rows are cut to this many tokens (overrides)")


def add_source_arguments(p: Any) -> None:
    """Every option of `HFSourceOptions` but `model` as flags, in one argument group of parser `p` (the
    command adds its own `--model`, whose meaning differs between commands)."""
    g = p.add_argument_group("Hugging Face models (--model hf:NAME_OR_PATH[@REVISION])")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default float32)")
    g.add_argument("--forget-file", default=None,
                   help="memorized sequences (.jsonl ids/text, .parquet, .safetensors); see find-memorized")
    g.add_argument("--retain-file", default=None,
                   help="clean data for retain (and perplexity, split in halves without --test-file): "
                        ".jsonl, .parquet, .safetensors or .txt")
    g.add_argument("--test-file", default=None, help="clean data for perplexity (test_ppl)")
    add_metric_arguments(g)
