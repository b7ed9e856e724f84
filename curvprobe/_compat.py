"""Deprecated module paths of curvprobe 0.1 (flat layout) → their new homes.

``import curvprobe.problem`` (and every other module that moved into a layer
package in 0.2) still works for one release: it returns the module at its new
path and emits a :class:`DeprecationWarning` naming it. :data:`MOVED_MODULES`
lists every old path with its new one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED_MODULES = {
    "curvprobe.problem": "curvprobe.core.problem",
    "curvprobe.operators": "curvprobe.core.operators",
    "curvprobe.eigen": "curvprobe.linalg",
    "curvprobe.probes": "curvprobe.criteria.probes",
    "curvprobe.surrogate": "curvprobe.criteria.surrogate",
    "curvprobe.validity": "curvprobe.criteria.validity",
    "curvprobe.convergence": "curvprobe.criteria.convergence",
    "curvprobe.curriculum": "curvprobe.criteria.curriculum",
    "curvprobe.theory": "curvprobe.criteria.theory",
    "curvprobe.models": "curvprobe.zoo.models",
    "curvprobe.data": "curvprobe.zoo.data",
    "curvprobe.adapters": "curvprobe.zoo.adapters",
    "curvprobe.builtin": "curvprobe.zoo.builtin",
    "curvprobe.cli": "curvprobe.app.cli",
    "curvprobe.config": "curvprobe.app.config",
    "curvprobe.sources": "curvprobe.app.sources",
    "curvprobe.runs": "curvprobe.app.runs",
    "curvprobe.demo": "curvprobe.app.demo",
    "curvprobe.report": "curvprobe.app.report",
    "curvprobe.plots": "curvprobe.app.plots",
}
"""Old dotted module path → new dotted module path."""


class _Alias(ModuleType):
    """A module that forwards every attribute to the module at the new path."""

    def __init__(self, name: str, target: ModuleType) -> None:
        super().__init__(name, target.__doc__)
        self._target = target

    def __getattr__(self, attr: str) -> object:
        return getattr(self._target, attr)

    def __dir__(self) -> list[str]:
        return dir(self._target)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to an alias of the new module, with a warning."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path will be removed in curvprobe 0.3",
                      DeprecationWarning, stacklevel=3)
        return _Alias(spec.name, importlib.import_module(new))

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed under its new path."""


def install_moved_module_finder() -> None:
    """Register the finder once (idempotent)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
