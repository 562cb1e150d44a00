"""Name -> regularizer class registry (timm's register_model / create_model pattern).

Built-in regularizers register on import of the package. Third-party ones plug in without
editing this repository, either

* through the entry-point group ``comhe_bench.regularizers`` (in the plugin's pyproject:
  ``[project.entry-points."comhe_bench.regularizers"] my_reg = "my_pkg.my_module"``); the group
  is loaded lazily on the first lookup, or
* with :func:`load_plugin` (``"my_pkg.my_module"`` or ``"path/to/file.py"``), whose import runs
  the module's ``@register``.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from .base import Regularizer
from .hints import hint

__all__ = ["ENTRY_POINT_GROUP", "register", "create", "available", "get", "load_plugin"]

ENTRY_POINT_GROUP = "comhe_bench.regularizers"
_REGISTRY: dict[str, type[Regularizer]] = {}
_entry_points_loaded = False


def register(cls=None, *, name: str | None = None):
    """Class decorator: ``@register`` or ``@register(name="my_reg")``.

    The name defaults to ``cls.name``; it is written back to ``cls.name``. Registering a
    different class under a taken name raises ValueError (re-registering the same class is a no-op,
    so re-importing a plugin is harmless).
    """

    def deco(c):
        if not (isinstance(c, type) and issubclass(c, Regularizer)):
            raise ValueError(f"@register expects a Regularizer subclass; got {c!r}")
        key = name or c.name
        if not key or not isinstance(key, str):
            raise ValueError(f"{c.__name__}: set a class attribute `name` or use @register(name=...)")
        old = _REGISTRY.get(key)
        if old is not None and old.__qualname__ != c.__qualname__:
            raise ValueError(f"regularizer name {key!r} is already registered by {old.__module__}.{old.__qualname__}")
        c.name = key
        _REGISTRY[key] = c
        return c

    return deco(cls) if cls is not None else deco


def _load_entry_points() -> None:
    """Import every module of the entry-point group once; a broken plugin warns, never breaks us."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a third-party import error must not take the library down
            warnings.warn(f"regularizer plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
            continue
        # an entry point may name the class itself rather than a module that registers it
        if isinstance(obj, type) and issubclass(obj, Regularizer) and obj not in _REGISTRY.values():
            register(obj, name=obj.name or ep.name)


def available(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell pattern (``"*comhe"``)."""
    _load_entry_points()
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get(name: str) -> type[Regularizer]:
    """The class registered under ``name``; ValueError naming the closest names otherwise."""
    _load_entry_points()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown regularizer {name!r}{hint(name, _REGISTRY)}"
            f" (available: {', '.join(sorted(_REGISTRY))})"
        )
    return _REGISTRY[name]


def create(name: str, **hparams) -> Regularizer:
    """A new, unattached regularizer with validated hyper-parameters: ``create("mhe", power=1)``."""
    return get(name)(**hparams)


def load_plugin(module_or_path: str) -> ModuleType:
    """Import a plugin by dotted module name or ``.py`` file path so that its ``@register`` runs.

    Returns the module. ValueError when neither a file nor an importable module is found.
    """
    spec = str(module_or_path)
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ValueError(f"plugin file not found: {spec}")
        mod_name = f"comhe_bench_plugin_{path.stem}"
        file_spec = importlib.util.spec_from_file_location(mod_name, path)
        if file_spec is None or file_spec.loader is None:
            raise ValueError(f"cannot import plugin file {spec} (is it a Python source file?)")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[mod_name] = module
        try:
            file_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise ValueError(f"plugin {spec!r} is neither a .py file nor an importable module ({exc})") from None
