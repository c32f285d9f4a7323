"""The Flask app factory: the composition root for the web process."""

from __future__ import annotations

import logging

from flask import Flask, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from connector import registry
from connector.config import Settings, load_settings
from connector.runtime import Runtime

#: Shopify and WooCommerce bodies are small; past this, something is wrong (and it's 413)
MAX_BODY_BYTES = 1024 * 1024


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

    from connector.web import admin, dashboard, errors, health, webhooks
    from connector.web import meta as meta_routes

    errors.init_app(app)

    @app.before_request
    def refuse_large_bodies() -> None:
        # Werkzeug refuses a large body only when a handler reads it; refuse it up front, so
        # every route answers 413 the same way, whatever it reads first.
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise RequestEntityTooLarge()

    app.register_blueprint(health.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(dashboard.bp)
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
