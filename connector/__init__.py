"""Send e-commerce conversions to Meta's Conversions API, server to server."""

from __future__ import annotations

__version__ = "0.1.0"
