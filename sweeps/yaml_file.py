"""Reading a small YAML data file (a search space) strictly: plain mappings, lists and scalars, nothing else.

A search space is data written by hand and sometimes received from someone else, so the reader refuses what
such a file never needs and what makes a YAML file dangerous or ambiguous, each with one line naming the file,
the line and the problem:

- a file over `MAX_BYTES`, a directory or another non-regular path (`/dev/zero` would never end), bytes that
  are not UTF-8;
- anchors and aliases (`&a`, `*a`, `<<: *a`): a few lines of them expand into billions of values
  ("billion laughs"), and every error message that prints such a value would have to expand it;
- explicit tags (`!!python/object:...`, `!!binary`, `!custom`): PyYAML's safe loader already refuses the Python
  ones, but only with a message about constructors; plain values are all a search space holds;
- duplicate keys in one mapping (YAML keeps the last one silently: the earlier range would be ignored);
- nesting deeper than `MAX_DEPTH` (the composer recurses: a file of `[[[[...` would raise RecursionError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sweeps.errors import SweepError

MAX_BYTES = 1 << 20  # 1 MiB: the shipped search spaces are under 1 KiB each
MAX_DEPTH = 16  # a search space nests 4 levels (params -> name -> choices -> value)


class _Refused(yaml.MarkedYAMLError):
    """A YAML feature this reader does not allow, at a place in the file."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors, aliases, explicit tags or duplicate keys, and with a depth bound."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(problem="YAML anchors and aliases (&name, *name, <<: *name) are not allowed; "
                                   "write each value out", problem_mark=event.start_mark)
        tag = getattr(event, "tag", None)
        if tag is not None:  # the parser sets a tag only when the file writes one
            raise _Refused(problem=f"YAML tag {tag!r} is not allowed; write plain values (numbers, strings, "
                                   f"true/false, lists, mappings)", problem_mark=event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: {...}`: the alias mechanism's other half
                raise _Refused(problem="YAML merge keys (<<) are not allowed; write each key out",
                               problem_mark=key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base constructor names it
                continue
            if duplicate:
                raise _Refused(problem=f"duplicate key {key!r} (YAML would keep only the last one)",
                               problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _at(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def one_line(text: Any) -> str:
    """`text` with its line breaks and runs of spaces made single spaces (messages are one line)."""
    return " ".join(str(text).split())


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """The document in `path` (None for an empty file), read as described above; SweepError otherwise.

    `what` names the file in messages ("search space file").
    """
    path = Path(path)
    if not path.exists():
        raise SweepError(f"{what} {path} does not exist")
    if path.is_dir():
        raise SweepError(f"{what} {path} is a directory; expected a YAML file")
    if not path.is_file():
        raise SweepError(f"{what} {path} is not a regular file; expected a YAML file")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SweepError(f"{what} {path} has {size} bytes; at most {MAX_BYTES} are read")
        data = path.read_bytes()
    except OSError as e:
        raise SweepError(f"cannot read {what} {path}: {one_line(e)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SweepError(f"{what} {path} is not UTF-8 text: byte {data[e.start]:#04x} at offset {e.start}"
                         ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader, stricter still)
    except _Refused as e:
        raise SweepError(f"{what} {path}{_at(e.problem_mark)}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise SweepError(f"malformed YAML in {path}{_at(mark)}: {one_line(problem)}") from None
