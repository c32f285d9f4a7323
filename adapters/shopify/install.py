"""Shopify app install: the embedded entry, the authorization-code grant, the shop's page."""

from __future__ import annotations

from flask import Blueprint

from connector.platform import PeriodicJob

#: the install routes; registered by the Shopify adapter
blueprint = Blueprint("shopify_install", __name__, template_folder="templates")


def periodic_jobs() -> list[PeriodicJob]:
    """The worker's Shopify jobs: daily webhook reconciliation and token refresh."""
    return []
