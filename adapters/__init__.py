"""Store platforms: one sub-package per platform, each exposing ``adapter``."""

from __future__ import annotations
