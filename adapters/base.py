"""The Adapter protocol every platform implements, and the values it exchanges with the core."""

from __future__ import annotations

from connector.platform import (
    Action,
    Adapter,
    ConnectionInfo,
    DataRequest,
    Envelope,
    Outcome,
    PeriodicJob,
    RedactCustomer,
    RedactStore,
    ScopesUpdated,
    Uninstalled,
    WebhookRequest,
)

__all__ = [
    "Action",
    "Adapter",
    "ConnectionInfo",
    "DataRequest",
    "Envelope",
    "Outcome",
    "PeriodicJob",
    "RedactCustomer",
    "RedactStore",
    "ScopesUpdated",
    "Uninstalled",
    "WebhookRequest",
]
