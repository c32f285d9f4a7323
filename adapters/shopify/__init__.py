"""Shopify: webhooks and translation (``webhooks``), app install (``install``)."""

from __future__ import annotations

from adapters.shopify.adapter import ShopifyAdapter

adapter = ShopifyAdapter()
