"""The Flask app factory: the composition root for the web process."""

from __future__ import annotations

import logging

from flask import Flask, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from connector import registry
from connector.config import Settings, load_settings
from connector.runtime import Runtime

#: Forms and OAuth callbacks are small; past this, something is wrong (and it's 413)
MAX_BODY_BYTES = 1024 * 1024
#: Webhook bodies: an order carries every line, and a POS order of 400 lines is over 1 MB.
#: A 413 makes Shopify retry and in the end remove the subscription, so the webhook routes
#: accept what a store can send: Shopify's Express package reads webhooks with a 500 kB cap
#: (``express.text({limit: '500kb'})`` in shopify-app-express), which large orders exceed,
#: so this is sized from the orders themselves, with room: a 400-line POS order is about
#: 1.1 MB (some 2.8 kB a line, tax and discount lines included), so 10 MiB holds over
#: 3,500 such lines.
WEBHOOK_MAX_BODY_BYTES = 10 * 1024 * 1024


def create_app(
    settings: Settings | None = None, runtime: Runtime | None = None
) -> Flask:
    """Build the web app; settings default to the environment (with dev keys where allowed)."""
    if runtime is None:
        runtime = Runtime.from_settings(settings or load_settings())
    settings = runtime.settings
    app = Flask(__name__, instance_path=str(settings.instance_path))
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_SECURE=settings.app_url.startswith("https://"),
        SESSION_COOKIE_SAMESITE="None"
        if settings.app_url.startswith("https://")
        else "Lax",
    )
    app.extensions["connector"] = runtime
    _configure_logging()

    from connector.web import admin, errors, health, webhooks
    from connector.web import meta as meta_routes

    errors.init_app(app)

    @app.before_request
    def refuse_large_bodies() -> None:
        # Werkzeug refuses a large body only when a handler reads it; refuse it up front, so
        # every route answers 413 the same way, whatever it reads first. The per-request
        # limit also bounds a chunked body, which has no Content-Length.
        limit = (
            WEBHOOK_MAX_BODY_BYTES
            if request.blueprint == webhooks.bp.name
            else MAX_BODY_BYTES
        )
        request.max_content_length = limit
        length = request.content_length
        if length is not None and length > limit:
            raise RequestEntityTooLarge()

    app.register_blueprint(health.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(meta_routes.bp)
    for adapter in registry.adapters().values():
        bp = adapter.blueprint()
        if bp is not None:
            app.register_blueprint(bp)
    return app


def get_runtime() -> Runtime:
    """The runtime of the app handling the current request."""
    runtime: Runtime = current_app.extensions["connector"]
    return runtime


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
