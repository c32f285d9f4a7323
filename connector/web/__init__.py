"""The Flask app factory: the composition root for the web process."""

from __future__ import annotations

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from connector import logs, redact, registry
from connector.config import Settings, load_settings
from connector.runtime import Runtime
from connector.web.login_throttle import LoginThrottle

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


#: what a page that is not embedded in Shopify's admin allows as its framer: no one
FRAME_NOBODY = "frame-ancestors 'none'"


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    login_throttle: LoginThrottle | None = None,
) -> Flask:
    """Build the web app; settings default to the environment (with dev keys where allowed).

    ``login_throttle`` counts failed ``/admin`` logins (a fresh one by default; tests pass
    one with their own clock).
    """
    if runtime is None:
        runtime = Runtime.from_settings(settings or load_settings())
    settings = runtime.settings
    app = Flask(__name__, instance_path=str(settings.instance_path))
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_SECURE=settings.app_url.startswith("https://"),
        # Every flow that uses the session (Meta connect, WooCommerce connect, the Shopify
        # install callback) runs in a top-level window, where Lax cookies travel; the page
        # embedded in Shopify's admin authenticates with App Bridge session tokens and sets
        # no cookie, so nothing needs SameSite=None.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
    )
    app.extensions["connector"] = runtime
    app.extensions["login_throttle"] = login_throttle or LoginThrottle()
    logs.configure(settings.log_format, process="web")
    redact.install()  # on gunicorn's and any other handler too
    if settings.trusted_proxies:
        # Heroku's router appends the client's address to X-Forwarded-For and sets
        # X-Forwarded-Proto; only that many hops are believed, and no Host or prefix.
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=0, x_port=0, x_prefix=0
        )

    from connector.web import admin, dashboard, errors, health, observe, webhooks
    from connector.web import meta as meta_routes

    observe.init_app(app)
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

    @app.after_request
    def forbid_framing(rv: Response) -> Response:
        # Clickjacking: only a page that names its framers (the Shopify page embedded in the
        # shop's admin) may be framed, and only by them. Error pages included.
        # https://shopify.dev/docs/apps/build/security/set-up-iframe-protection
        policy = rv.headers.get("Content-Security-Policy", "")
        if "frame-ancestors" not in policy:
            rv.headers["Content-Security-Policy"] = (
                f"{policy.rstrip('; ')}; {FRAME_NOBODY}" if policy else FRAME_NOBODY
            )
            rv.headers["X-Frame-Options"] = "DENY"
        rv.headers.setdefault("X-Content-Type-Options", "nosniff")
        return rv

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
