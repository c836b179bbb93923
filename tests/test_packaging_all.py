"""Public modules say what they export: ``__all__`` in every top-level module and package.

The modules checked are the top-level modules of ``replication`` and its packages'
``__init__`` files, except ``__main__`` (a script), the compatibility aliases that replace
themselves with the moved module in ``sys.modules`` (``replication.commands``,
``replication.protocol``), and packages that only document their submodules (they define no
names). Every ``__all__`` found anywhere in the package names things that exist, once, and
lists every public class and function its module defines.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import replication

#: Public-named helpers that are deliberately not exported (module -> names).
NOT_EXPORTED = {
    # Shared by the module's two collectors; public-named before the module had ``__all__``.
    "replication.metrics": {"command_families"},
}


def package_modules() -> list[ModuleType]:
    """Every module of the package, imported, under its own name (aliases skipped)."""
    modules = [replication]
    for info in pkgutil.walk_packages(replication.__path__, "replication."):
        if info.name.endswith(".__main__"):
            continue
        module = importlib.import_module(info.name)
        if module.__name__ == info.name:
            modules.append(module)
    return modules


def public_definitions(module: ModuleType) -> set[str]:
    """Names of the public classes and functions defined in ``module`` itself."""
    return {
        name for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }


def is_public_face(module: ModuleType) -> bool:
    """A top-level module (``replication.x``) or a package's ``__init__``."""
    return module.__name__.count(".") <= 1 or hasattr(module, "__path__")


def test_public_modules_declare_all() -> None:
    """Every top-level module and every package that defines names has ``__all__``; the
    ones without are exactly the packages that define nothing (``replication.cluster`` and
    ``replication.wire``, which only describe their submodules)."""
    without = [
        module.__name__ for module in package_modules()
        if is_public_face(module) and not hasattr(module, "__all__")
    ]
    assert sorted(without) == ["replication.cluster", "replication.wire"]
    for name in without:
        assert public_definitions(importlib.import_module(name)) == set()


@pytest.mark.parametrize(
    "module",
    [module for module in package_modules() if hasattr(module, "__all__")],
    ids=lambda module: module.__name__,
)
def test_all_is_complete_and_resolves(module: ModuleType) -> None:
    """``__all__`` lists each name once, every name is an attribute of the module (so
    ``from module import *`` works), and every public class or function the module defines
    is listed (a new one must be exported or made private)."""
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"duplicates in {module.__name__}.__all__"
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == [], f"{module.__name__}.__all__ names what it does not have"
    unlisted = public_definitions(module) - set(exported) - NOT_EXPORTED.get(module.__name__, set())
    assert unlisted == set(), f"add to {module.__name__}.__all__ (or make private): {unlisted}"
