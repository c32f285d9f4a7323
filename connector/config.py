"""Settings from the environment (12-factor), validated once at start."""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs
from cryptography.fernet import Fernet

from connector.crypto import fernet_key
from connector.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_GRAPH_URL = "https://graph.facebook.com"
#: the version Meta's Business SDK pins today; every Graph version lives at least two years
DEFAULT_API_VERSION = "v25.0"
DEFAULT_SHOPIFY_ADMIN_URL_TEMPLATE = "https://{shop}"
DEFAULT_SHOPIFY_SCOPES = "read_orders"
SECRETS_FILE = "secrets.json"
#: the range of a worker's lease, the same for CONNECTOR_LEASE_SECONDS and --lease-seconds
MIN_LEASE_SECONDS = 2
MAX_LEASE_SECONDS = 3600
MAX_SEND_CONCURRENCY = 64
#: values of CONNECTOR_WEBHOOK_TRANSLATION: in the web request, or by the worker
WEBHOOK_TRANSLATIONS = ("inline", "worker")


#: the distribution's name, also the per-user data folder's
APP_NAME = "capi-connector"


def source_checkout() -> Path | None:
    """The project folder when the connector runs from its source (an editable install)."""
    root = Path(__file__).resolve().parent.parent
    try:
        pyproject = (root / "pyproject.toml").read_text()
    except OSError:
        return None
    return root if f'name = "{APP_NAME}"' in pyproject else None


def default_instance_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the development instance lives when CONNECTOR_INSTANCE_PATH is not set.

    The same folder from any working directory: the project's ``instance/`` when the
    connector runs from its source folder (where ``connector serve`` has always put it), else
    the user's data folder (``$XDG_DATA_HOME/capi-connector``, by default
    ``~/.local/share/capi-connector`` on Linux; platformdirs' rules elsewhere).
    """
    checkout = source_checkout()
    if checkout is not None:
        return checkout / "instance"
    if environ is not None and environ.get("XDG_DATA_HOME"):
        return Path(environ["XDG_DATA_HOME"]).expanduser().resolve() / APP_NAME
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)).resolve()


def normalize_database_url(url: str) -> str:
    """Heroku hands out postgres://, which SQLAlchemy >= 1.4 rejects; we speak psycopg 3."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in {"postgres", "postgresql"}:
        return f"postgresql+psycopg://{rest}"
    return url


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the connector reads from its environment."""

    env: str = "development"
    instance_path: Path = field(default_factory=lambda: default_instance_path())
    database_url: str = ""
    encryption_keys: tuple[str, ...] = ()
    secret_key: str = ""
    app_url: str = "http://localhost:8000"
    port: int = 8000
    shopify_api_key: str | None = None
    shopify_api_secret: str | None = None
    shopify_api_secret_previous: str | None = None
    shopify_scopes: str = DEFAULT_SHOPIFY_SCOPES
    shopify_admin_url_template: str = DEFAULT_SHOPIFY_ADMIN_URL_TEMPLATE
    meta_app_id: str | None = None
    meta_app_secret: str | None = None
    meta_graph_url: str = DEFAULT_GRAPH_URL
    meta_api_version: str = DEFAULT_API_VERSION
    #: where Facebook's login dialog lives (tests point it at a local fake)
    meta_dialog_url: str = "https://www.facebook.com"
    admin_password: str | None = None
    #: development only: let WooCommerce connect to http:// and local stores (a WordPress on localhost)
    woocommerce_allow_insecure: bool = False
    #: dispatcher tuning
    batch_size: int = 1000
    lease_seconds: int = 120
    poll_interval: float = 1.0
    http_timeout: float = 20.0
    #: how store host names are resolved before a connection (``connector.outbound``); not an
    #: environment setting: ``None`` is the system resolver, tests inject a mapping of their own
    store_resolver: Callable[[str, int], Sequence[str]] | None = field(
        default=None, compare=False, repr=False
    )
    #: reverse proxies in front of the web process whose X-Forwarded-For/-Proto are trusted
    trusted_proxies: int = 0
    #: a Bearer token that opens /metrics in production (ADMIN_PASSWORD does too)
    metrics_token: str | None = None
    #: "json" (one object per line) or "text"; json by default in production
    log_format: str = "text"
    #: retention (connector.retention): personal data of sent events, and webhook receipts
    retain_personal_data_days: int = 30
    retain_receipts_days: int = 7
    #: seconds between order sweeps of every connection (CONNECTOR_SWEEP_INTERVAL)
    sweep_interval: float = 900.0
    #: requests a worker keeps in flight to Meta at once
    send_concurrency: int = 16
    #: seconds a database statement may run before PostgreSQL cancels it (0: no limit)
    db_statement_timeout: float = 30.0
    #: where order and checkout deliveries are translated (CONNECTOR_WEBHOOK_TRANSLATION):
    #: "inline" in the web request, or "worker" (PostgreSQL only: the web process records
    #: the sealed body and answers, the worker makes the events; see connector.inbox)
    webhook_translation: str = "inline"

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def graph_base(self) -> str:
        """``{META_GRAPH_URL}/{META_API_VERSION}``, with no doubled slash."""
        return f"{self.meta_graph_url.rstrip('/')}/{self.meta_api_version}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate; every problem is reported at once in one ConfigError."""
        problems: list[str] = []
        env = (
            environ.get("CONNECTOR_ENV", "development").strip().lower() or "development"
        )
        if env not in {"development", "production", "test"}:
            problems.append(
                f"CONNECTOR_ENV must be development, production or test, not {env!r}"
            )
        configured = environ.get("CONNECTOR_INSTANCE_PATH")
        instance_path = (
            Path(configured).expanduser().resolve()
            if configured
            else default_instance_path(environ)
        )
        database_url = normalize_database_url(
            environ.get("DATABASE_URL") or f"sqlite:///{instance_path / 'connector.db'}"
        )
        keys = tuple(
            k.strip()
            for k in environ.get("CONNECTOR_ENCRYPTION_KEYS", "").split(",")
            if k.strip()
        )
        for i, key in enumerate(keys, 1):
            try:
                fernet_key(key)
            except ValueError:
                problems.append(
                    f"CONNECTOR_ENCRYPTION_KEYS entry {i} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes; make one with `connector keys generate`) "
                    "nor a random secret of at least 32 characters"
                )
        app_url = (environ.get("APP_URL") or "http://localhost:8000").rstrip("/")
        parts = urlsplit(app_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            problems.append(f"APP_URL must be an absolute http(s) URL, not {app_url!r}")
        port = _int(environ, "PORT", 8000, problems)
        batch_size = _int(environ, "CONNECTOR_BATCH_SIZE", 1000, problems)
        if not 1 <= batch_size <= 1000:
            problems.append(
                "CONNECTOR_BATCH_SIZE must be between 1 and 1000 (Meta's limit)"
            )
        lease_seconds = _int(environ, "CONNECTOR_LEASE_SECONDS", 120, problems)
        if not MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS:
            problems.append(
                f"CONNECTOR_LEASE_SECONDS must be at least {MIN_LEASE_SECONDS} "
                f"and at most {MAX_LEASE_SECONDS}"
            )
        send_concurrency = _int(environ, "CONNECTOR_SEND_CONCURRENCY", 16, problems)
        if not 1 <= send_concurrency <= MAX_SEND_CONCURRENCY:
            problems.append(
                f"CONNECTOR_SEND_CONCURRENCY must be between 1 and {MAX_SEND_CONCURRENCY}"
            )
        db_statement_timeout = _float(
            environ, "CONNECTOR_DB_STATEMENT_TIMEOUT", 30.0, problems
        )
        if db_statement_timeout < 0:
            problems.append("CONNECTOR_DB_STATEMENT_TIMEOUT must not be negative")
        poll_interval = _float(environ, "CONNECTOR_POLL_INTERVAL", 1.0, problems)
        http_timeout = _float(environ, "CONNECTOR_HTTP_TIMEOUT", 20.0, problems)
        sweep_interval = _float(environ, "CONNECTOR_SWEEP_INTERVAL", 900.0, problems)
        if sweep_interval < 60:
            problems.append("CONNECTOR_SWEEP_INTERVAL must be at least 60 seconds")
        webhook_translation = (
            environ.get("CONNECTOR_WEBHOOK_TRANSLATION") or "inline"
        ).lower()
        if webhook_translation not in WEBHOOK_TRANSLATIONS:
            problems.append(
                "CONNECTOR_WEBHOOK_TRANSLATION must be one of "
                f"{', '.join(WEBHOOK_TRANSLATIONS)}"
            )
        if env == "production":
            if not keys:
                problems.append("CONNECTOR_ENCRYPTION_KEYS is required in production")
            if not environ.get("SECRET_KEY"):
                problems.append("SECRET_KEY is required in production")
            if parts.scheme != "https":
                problems.append(
                    "APP_URL must be https in production (OAuth redirects and webhooks)"
                )
        template = (
            environ.get("SHOPIFY_ADMIN_URL_TEMPLATE")
            or DEFAULT_SHOPIFY_ADMIN_URL_TEMPLATE
        )
        if "{shop}" not in template:
            problems.append("SHOPIFY_ADMIN_URL_TEMPLATE must contain {shop}")
        version = environ.get("META_API_VERSION") or DEFAULT_API_VERSION
        if not version.startswith("v"):
            problems.append(f"META_API_VERSION looks like v25.0, not {version!r}")
        allow_insecure = environ.get("WOOCOMMERCE_ALLOW_INSECURE_URLS", "").lower() in {
            "1",
            "true",
            "yes",
        }
        if allow_insecure and env == "production":
            problems.append("WOOCOMMERCE_ALLOW_INSECURE_URLS is for development only")
        # Heroku's router is one proxy and sets X-Forwarded-For/-Proto; nothing else is trusted.
        trusted_proxies = _int(
            environ,
            "CONNECTOR_TRUSTED_PROXIES",
            1 if env == "production" else 0,
            problems,
        )
        if not 0 <= trusted_proxies <= 5:
            problems.append("CONNECTOR_TRUSTED_PROXIES must be between 0 and 5")
        log_format = (
            environ.get("CONNECTOR_LOG_FORMAT")
            or ("json" if env == "production" else "text")
        ).lower()
        if log_format not in {"json", "text"}:
            problems.append(
                f"CONNECTOR_LOG_FORMAT must be json or text, not {log_format!r}"
            )
        retain_personal = _int(
            environ, "CONNECTOR_RETAIN_PERSONAL_DATA_DAYS", 30, problems
        )
        retain_receipts = _int(environ, "CONNECTOR_RETAIN_RECEIPTS_DAYS", 7, problems)
        if retain_personal < 1 or retain_receipts < 3:
            # Shopify retries a delivery for up to 4 hours and its redelivery keeps the
            # delivery id; 3 days keeps every retry deduplicated with a margin.
            problems.append(
                "CONNECTOR_RETAIN_PERSONAL_DATA_DAYS must be at least 1 and "
                "CONNECTOR_RETAIN_RECEIPTS_DAYS at least 3"
            )
        if problems:
            raise ConfigError(problems)
        return cls(
            env=env,
            instance_path=instance_path,
            database_url=database_url,
            encryption_keys=keys,
            secret_key=environ.get("SECRET_KEY", ""),
            app_url=app_url,
            port=port,
            shopify_api_key=environ.get("SHOPIFY_API_KEY") or None,
            shopify_api_secret=environ.get("SHOPIFY_API_SECRET") or None,
            shopify_api_secret_previous=environ.get("SHOPIFY_API_SECRET_PREVIOUS")
            or None,
            shopify_scopes=environ.get("SHOPIFY_SCOPES") or DEFAULT_SHOPIFY_SCOPES,
            shopify_admin_url_template=template,
            meta_app_id=environ.get("META_APP_ID") or None,
            meta_app_secret=environ.get("META_APP_SECRET") or None,
            meta_graph_url=(environ.get("META_GRAPH_URL") or DEFAULT_GRAPH_URL).rstrip(
                "/"
            ),
            meta_api_version=version,
            meta_dialog_url=(
                environ.get("META_DIALOG_URL") or "https://www.facebook.com"
            ).rstrip("/"),
            admin_password=environ.get("ADMIN_PASSWORD") or None,
            woocommerce_allow_insecure=allow_insecure,
            batch_size=batch_size,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            http_timeout=http_timeout,
            trusted_proxies=trusted_proxies,
            metrics_token=environ.get("METRICS_TOKEN") or None,
            log_format=log_format,
            retain_personal_data_days=retain_personal,
            retain_receipts_days=retain_receipts,
            sweep_interval=sweep_interval,
            webhook_translation=webhook_translation,
            send_concurrency=send_concurrency,
            db_statement_timeout=db_statement_timeout,
        )


def _int(
    environ: Mapping[str, str], name: str, default: int, problems: list[str]
) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        problems.append(f"{name} must be a whole number, not {raw!r}")
        return default


def _float(
    environ: Mapping[str, str], name: str, default: float, problems: list[str]
) -> float:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{name} must be a number of seconds, not {raw!r}")
        return default
    if value <= 0:
        problems.append(f"{name} must be positive")
    return value


def with_dev_secrets(settings: Settings) -> Settings:
    """Outside production, generate missing keys once into the instance folder and reuse them."""
    if settings.is_production or (settings.encryption_keys and settings.secret_key):
        return settings
    path = settings.instance_path / SECRETS_FILE
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    else:
        settings.instance_path.mkdir(parents=True, exist_ok=True)
        stored = {
            "encryption_key": Fernet.generate_key().decode(),
            "secret_key": secrets.token_urlsafe(32),
        }
        # 0o600: the file is as sensitive as the database it unlocks.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh)
        log.warning(
            "generated development keys in %s; set CONNECTOR_ENCRYPTION_KEYS and SECRET_KEY in production",
            path,
        )
    return replace(
        settings,
        encryption_keys=settings.encryption_keys or (stored["encryption_key"],),
        secret_key=settings.secret_key or stored["secret_key"],
    )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for a process: the environment, plus development keys where allowed."""
    environ = os.environ if environ is None else environ
    settings = Settings.from_env(environ)
    stray = Path.cwd() / "instance"
    if (
        not settings.is_production
        and not environ.get("CONNECTOR_INSTANCE_PATH")
        and (stray / SECRETS_FILE).exists()
        and stray.resolve() != settings.instance_path
    ):
        # An instance an older version made in this folder; not used unless asked for.
        log.warning(
            "using the development instance in %s; the one in %s is not used "
            "(set CONNECTOR_INSTANCE_PATH=%s to use it)",
            settings.instance_path,
            stray.resolve(),
            stray.resolve(),
        )
    return with_dev_secrets(settings)
