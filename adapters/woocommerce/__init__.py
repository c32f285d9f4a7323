"""WooCommerce: webhooks, translation, and the key-generation connect flow."""

from __future__ import annotations

from adapters.woocommerce.adapter import WooCommerceAdapter

adapter = WooCommerceAdapter()
