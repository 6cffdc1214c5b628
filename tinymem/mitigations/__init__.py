"""The mitigation registry: method CLI name -> class. Adding a method = one file here + one YAML search space.

Every public module of this package is imported on first use, so a new `tinymem/mitigations/<name>.py`
that decorates its class with `@register` is found without editing this file.
"""

from __future__ import annotations

import importlib
import pkgutil

from tinymem.errors import ConfigError
from tinymem.mitigations.base import (FAMILIES, FAMILY_BASES, Hyperparams, Mitigation, MitigationContext,
                                      MitigationOutput, hp)
from tinymem.mitigations.memory import MethodMemory

REGISTRY: dict[str, type[Mitigation]] = {}
_loaded = False


def register(cls: type[Mitigation]) -> type[Mitigation]:
    """Class decorator: add a method to the registry under `cls.name`."""
    if not cls.name or cls.family not in FAMILIES:
        raise TypeError(f"{cls.__name__} needs a name and a family in {FAMILIES}")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"method name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name not in ("base", "memory"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def method_names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def get_method(name: str) -> type[Mitigation]:
    """The class registered as `name`; an unknown name is a ConfigError listing the registered ones."""
    _load_all()
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; allowed: {sorted(REGISTRY)}")
    return REGISTRY[name]


def get_family_base(family: str) -> type[Mitigation] | None:
    """The base class of `family` (its `memory` is the family's worst case); None for a family without one
    (`regularizer`) or an unknown name."""
    _load_all()
    return FAMILY_BASES.get(family)


def method_memory(name: str) -> MethodMemory | None:
    """What a trial of method `name` holds on a GPU: its class's `memory`, else its family base's; None for
    an unregistered name or a method without one (regularizers)."""
    _load_all()
    cls = REGISTRY.get(name)
    if cls is None:
        return None
    if cls.memory is not None:
        return cls.memory
    base = FAMILY_BASES.get(cls.family)
    return base.memory if base is not None else None


__all__ = ["REGISTRY", "register", "get_method", "method_names", "get_family_base", "method_memory",
           "Mitigation", "MitigationContext", "MitigationOutput", "MethodMemory", "Hyperparams", "hp",
           "FAMILIES", "FAMILY_BASES"]
