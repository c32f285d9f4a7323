"""Platform name -> Adapter, found in the ``adapters`` package at start-up."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

from connector.errors import NotFoundError

if TYPE_CHECKING:
    from connector.platform import Adapter

#: the package scanned for platforms; a string so the core holds no static import of it
ADAPTERS_PACKAGE = "adapters"


@cache
def adapters() -> dict[str, Adapter]:
    """Every platform sub-package that exposes a module-level ``adapter``."""
    package: ModuleType = importlib.import_module(ADAPTERS_PACKAGE)
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{ADAPTERS_PACKAGE}.{info.name}")
        adapter = getattr(module, "adapter", None)
        if adapter is not None:
            found[adapter.platform] = adapter
    return found


def get_adapter(platform: str) -> Adapter:
    try:
        return adapters()[platform]
    except KeyError:
        raise NotFoundError(f"no platform named {platform!r}") from None
