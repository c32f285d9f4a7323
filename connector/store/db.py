"""Engine and session factory from Settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from connector import jsoncodec

#: seconds to wait for a PostgreSQL connection before giving up (libpq ``connect_timeout``)
CONNECT_TIMEOUT_SECONDS = 10
#: TCP keepalives: a peer gone silent (a failover, a dropped NAT entry) is noticed in about
#: idle + interval * count = 30 + 10 * 3 seconds instead of the kernel's two hours
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
#: unacknowledged writes give up after this many milliseconds (Linux ``TCP_USER_TIMEOUT``)
TCP_USER_TIMEOUT_MS = 60_000


def postgres_connect_args(statement_timeout: float = 30.0) -> dict[str, Any]:
    """libpq parameters that keep a half-open connection from blocking a process forever.

    ``statement_timeout`` in seconds (0: none) bounds each statement on the server; the
    keepalives and ``tcp_user_timeout`` bound a connection whose peer vanished, which no
    server-side setting can see. Parameters: https://www.postgresql.org/docs/current/libpq-connect.html
    """
    args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        **KEEPALIVES,
    }
    if statement_timeout > 0:
        args["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    return args


def make_engine(
    database_url: str, *, statement_timeout: float = 30.0, **kwargs: Any
) -> Engine:
    """An engine for ``database_url``; SQLite gets WAL, foreign keys and a busy timeout.

    PostgreSQL gets connect and statement timeouts and TCP keepalives
    (``postgres_connect_args``); ``statement_timeout`` is in seconds, 0 for none.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            from pathlib import Path

            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            **_json_codec(kwargs),
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take it over so BEGIN IMMEDIATE works.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # No pre-ping: it costs a round trip on every webhook. A connection PostgreSQL dropped fails
    # one request, SQLAlchemy then empties the pool, and the platform retries the delivery.
    kwargs.setdefault("pool_recycle", 1800)
    connect_args = {**postgres_connect_args(statement_timeout)}
    given = url.query.get("options")
    if given and "options" in connect_args:
        # Keep the URL's own options (a search_path, say) beside ours.
        extra = " ".join(given) if isinstance(given, tuple) else given
        connect_args["options"] = f"{extra} {connect_args['options']}"
    connect_args.update(kwargs.pop("connect_args", {}))
    kwargs["connect_args"] = connect_args
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **_json_codec(kwargs))


def _json_codec(kwargs: dict[str, Any]) -> dict[str, Any]:
    """JSON columns read and written by :mod:`connector.jsoncodec` unless the caller chose."""
    kwargs.setdefault("json_serializer", jsoncodec.dumps_text)
    kwargs.setdefault("json_deserializer", jsoncodec.loads)
    return kwargs


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock at BEGIN: two writers queue instead of failing mid-transaction.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
