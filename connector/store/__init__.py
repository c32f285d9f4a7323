"""Persistence: models, engine, and the few queries the connector needs."""

from __future__ import annotations
