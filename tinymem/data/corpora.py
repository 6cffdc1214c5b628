"""Text corpora for the language data path: where the documents come from.

`load_corpus(name)` returns a `Corpus`: the training documents in a fixed order and, when the corpus has an
official held-out split, its test documents. Three sources:

- `builtin`: real English prose that ships with every CPython: the 79 help topics of `pydoc_data.topics`
  (about 465k characters, Python's own documentation). Always offline; the default.
- a local path: one text file (any name; the user picked it), or a folder whose `*.txt` files are read
  recursively in sorted path order, one document per file. A folder holding WikiText's own files
  (`wiki.train.tokens` and `wiki.test.tokens`, as in the unzipped `wikitext-103-v1.zip`) is read as WikiText
  with its official train/test split, so a local copy of WikiText-103 needs no network.
- `wikitext-103`: Hugging Face `wikitext`/`wikitext-103-v1` through `datasets.load_dataset` (the paper's
  corpus), for users with network. Imported lazily; nothing is downloaded unless this
  corpus is asked for, and a missing `datasets` package or an unreachable hub is a clear error, fast.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tinymem.errors import ConfigError, TinyMemError

BUILTIN = "builtin"
WIKITEXT = "wikitext-103"
KNOWN_CORPORA = (BUILTIN, WIKITEXT)
WIKITEXT_FILES = {"train": "wiki.train.tokens", "test": "wiki.test.tokens"}
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Corpus:
    """Documents of a corpus. `test` is the official held-out split, or None when the corpus has none."""

    name: str
    train: list[str]
    test: list[str] | None = None

    @property
    def num_chars(self) -> int:
        return sum(map(len, self.train)) + sum(map(len, self.test or []))


def load_corpus(name: str) -> Corpus:
    """The corpus `name`: `builtin`, `wikitext-103`, or a local file/folder path (see the module docstring)."""
    if name == BUILTIN:
        return builtin_corpus()
    if name == WIKITEXT:
        return wikitext_hub_corpus()
    path = Path(os.path.expanduser(name))
    if path.is_file():
        return Corpus(name=str(path), train=[_read_text(path)])
    if path.is_dir():
        return local_folder_corpus(path)
    raise ConfigError(f"unknown corpus {name!r}: not one of {list(KNOWN_CORPORA)} and not an existing file or "
                      "folder")


def builtin_corpus() -> Corpus:
    """Python's help topics, one document each, in sorted topic order (identical on every machine with the
    same Python minor version)."""
    from pydoc_data.topics import topics

    # A blank line after each topic keeps document boundaries visible in the single token stream.
    return Corpus(name=BUILTIN, train=[topics[key].strip() + "\n\n" for key in sorted(topics)])


def local_folder_corpus(folder: Path) -> Corpus:
    """A folder of `.txt` files (recursively, sorted by relative path), or a local WikiText copy."""
    splits = {s: folder / f for s, f in WIKITEXT_FILES.items()}
    if all(p.is_file() for p in splits.values()):
        return Corpus(name=str(folder), train=_read_lines(splits["train"]), test=_read_lines(splits["test"]))
    files = sorted((p for p in folder.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise ConfigError(f"corpus folder {str(folder)!r} holds no .txt files (and no WikiText files "
                          f"{sorted(WIKITEXT_FILES.values())})")
    return Corpus(name=str(folder), train=[_read_text(p) for p in files])


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"corpus file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ConfigError(f"corpus file {str(path)!r} is empty")
    return text


def _read_lines(path: Path) -> list[str]:
    # WikiText is line-oriented; the paper tokenizes each line (newline included) and concatenates.
    return [line for line in _read_text(path).splitlines(keepends=True) if line.strip()]


def hub_reachable(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers within `timeout` seconds (any HTTP status counts as an answer).

    Hub clients retry a failed connection for about a minute; this probe lets us fail in seconds instead.
    urllib honours the usual proxy environment variables, as the hub client does.
    """
    url = endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def hub_offline_mode() -> bool:
    """True when the user asked the Hugging Face libraries to stay offline."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").strip().lower() in ("1", "true", "yes", "on") for f in flags)


def hf_text_dataset(path: str, name: str | None = None, data_files: str | dict[str, str] | None = None,
                    cache_dir: str | None = None) -> dict[str, list[str]]:
    """`datasets.load_dataset(path, name, data_files=..., cache_dir=...)` as {split: non-empty `text` rows}.

    A missing `datasets` package is a ConfigError; any loading failure (network, cache, files) a TinyMemError
    with its cause.
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"corpus {path!r} needs the `datasets` package, which is not installed: "
                          "pip install 'tinymem-sweeps[online]' (or use corpus=builtin or a local file/folder)"
                          ) from None
    try:
        ds = datasets.load_dataset(path, name, data_files=data_files, cache_dir=cache_dir)
    except Exception as e:  # network, missing cache, bad files: all surface as one clear error
        raise TinyMemError(f"could not load dataset {path!r}" + (f" ({name})" if name else "") +
                           f": {type(e).__name__}: {e}") from None
    out = {}
    for split, rows in ds.items():
        if "text" not in rows.column_names:
            raise ConfigError(f"dataset {path!r} split {split!r} has no 'text' column; it has {rows.column_names}")
        out[split] = [t for t in rows["text"] if t and t.strip()]
    return out


def wikitext_hub_corpus() -> Corpus:
    """WikiText-103 (raw lines, the paper's config `wikitext-103-v1`) from the hub or the datasets cache.

    In offline mode (HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1) `datasets` reads its cache only. Otherwise the
    hub is probed first, so that a machine without network gets an error in seconds, not after a minute of
    retries.
    """
    if not hub_offline_mode() and not hub_reachable():
        raise TinyMemError(f"corpus {WIKITEXT!r} needs the Hugging Face hub, which is unreachable from here. "
                           "Use a machine with network, set HF_HUB_OFFLINE=1 to read a cached copy, point "
                           "corpus= at a local folder with wiki.train.tokens and wiki.test.tokens, or use "
                           "corpus=builtin")
    # The canonical id of the old `wikitext` dataset (the hub redirects the short name to it).
    splits = hf_text_dataset("Salesforce/wikitext", "wikitext-103-v1")
    return Corpus(name=WIKITEXT, train=splits["train"], test=splits["test"])
