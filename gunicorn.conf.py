"""The web process's server settings (gunicorn), read by the Procfile's ``web`` line.

Environment (all optional):

- ``PORT``: the port to listen on, all interfaces (the host sets it; default 8000).
- ``WEB_CONCURRENCY``: worker processes (Heroku sets it from the dyno size; default 2).
- ``WEB_WORKER_CONNECTIONS``: open connections one worker serves at once (default 1000).

Why these values (README "Deploying: the web edge" says more):

- ``gevent`` workers: each connection is a greenlet, so a client that sends its headers or
  body a byte at a time, or opens a connection and says nothing, costs one idle greenlet and
  blocks no one; with ``sync`` workers two such sockets stopped every webhook. psycopg 3
  waits cooperatively once ``select`` is monkey-patched (the worker patches before the app,
  and so psycopg, is imported; nothing here imports them), SQLAlchemy's pool queue uses the
  patched locks, and the webhook path does no network I/O of its own.
- ``keepalive``: also the time a client has to send a whole request head (gevent workers
  read it under that timeout), so a client dribbling its headers is let go after 5 s.
- ``timeout``: a worker whose event loop is stuck for this long is restarted (it is a
  heartbeat, not a per-request limit, for gevent workers).
- ``graceful_timeout``: on SIGTERM in-flight requests get this long; Heroku sends SIGKILL 30 s
  after SIGTERM, so it stays well inside that.
- Request line and header limits match Heroku's router (8 KiB per line), so nothing the
  router passes on is refused here, and nothing larger reaches the app.
"""

from __future__ import annotations

import os

from connector.logs import gunicorn_logconfig_dict

bind = f"0.0.0.0:{os.environ.get('PORT') or '8000'}"
workers = int(os.environ.get("WEB_CONCURRENCY") or 2)
worker_class = "gevent"
worker_connections = int(os.environ.get("WEB_WORKER_CONNECTIONS") or 1000)

timeout = 25
graceful_timeout = 20
keepalive = 5
# Each worker listens on its own socket (SO_REUSEPORT) and the kernel spreads new
# connections across them. With one shared socket, whichever worker woke first took most of
# a burst of keep-alive connections (a router's pool, a load test): 16 split 6/10 or 3/13
# far more often than not, and the busier worker's queue set the latency while the other
# idled. The cost: connections still waiting in a worker's own queue when that worker is
# restarted are refused, and the client (a platform's webhook) tries again.
reuse_port = True

limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# One access line per request on stdout, with query values and secret headers redacted.
accesslog = "-"
errorlog = "-"
access_log_format = (
    '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}i)s ua="%(a)s"'
)
logger_class = "connector.access_log.RedactingLogger"
# gunicorn's own lines (access and error) in the app's format: JSON lines in production, with
# the same redaction; CONNECTOR_LOG_FORMAT overrides, as for every process.
logconfig_dict = gunicorn_logconfig_dict(
    os.environ.get("CONNECTOR_LOG_FORMAT")
    or ("json" if os.environ.get("CONNECTOR_ENV") == "production" else "text")
)
# No runtime control socket: a dyno is managed by signals, and none is left in $HOME.
control_socket_disable = True

# Forwarded headers are trusted by the app itself (werkzeug's ProxyFix, see
# CONNECTOR_TRUSTED_PROXIES), not by gunicorn, so only one layer decides.
forwarded_allow_ips = "127.0.0.1,::1"


# Metrics of every worker meet in one folder (prometheus-client's multiprocess mode,
# https://prometheus.github.io/client_python/multiprocess/): the master makes a fresh private
# one (mkdtemp: unguessable name, mode 0700) before any worker starts, unless the operator
# named one; a configured folder is emptied of the previous run's files, as the library asks.
_made_metrics_dir: dict[str, str] = {}


def on_starting(server: object) -> None:
    import glob
    import tempfile

    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not configured:
        made = tempfile.mkdtemp(prefix="capi-connector-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _made_metrics_dir["path"] = made
        return
    os.makedirs(configured, mode=0o700, exist_ok=True)
    for stale in glob.glob(os.path.join(configured, "*.db")):
        os.remove(stale)


def child_exit(server: object, worker: object) -> None:
    from connector.metrics import mark_process_dead

    mark_process_dead(getattr(worker, "pid"))  # noqa: B009 - gunicorn's Worker, untyped here


def on_exit(server: object) -> None:
    """The folder this run made goes with it (a configured one stays)."""
    import shutil

    made = _made_metrics_dir.get("path")
    if made:
        shutil.rmtree(made, ignore_errors=True)


def post_worker_init(worker: object) -> None:
    """Once a worker has loaded the app, its objects leave the garbage collector's sight.

    The app's modules, routes, SQLAlchemy tables and phone metadata are about 100,000
    objects that live as long as the worker; a full collection walked all of them, about
    50 ms during which no request moved. ``gc.freeze()`` puts them in the permanent
    generation (https://docs.python.org/3/library/gc.html#gc.freeze), so a collection only
    walks what requests made since.
    """
    import gc

    gc.freeze()
