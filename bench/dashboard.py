"""How long each dashboard page takes to render with 1,000,000 events in PostgreSQL.

Builds a scratch schema (``connector db upgrade``: the same indexes as production), fills
it with ``--events`` outbox rows across ``--connections`` stores over 60 days (one store,
the benchmarked one, holds ``--share`` of them; a few percent dead and held, payloads as
the outbox stores them), runs VACUUM ANALYZE, then renders every page of the big store
``--runs`` times through the WSGI app (no network) and prints min / median / p95 / max
in milliseconds. The operator's list of every store is timed too.

    .venv/bin/python bench/dashboard.py [--events 1000000] [--connections 50]
        [--share 0.2] [--runs 20] [--database-url postgresql://postgres@127.0.0.1/test]

Target: every page's p95 under 300 ms. The schema is dropped at the end (``--keep`` not).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from connector import migrate  # noqa: E402
from connector.config import Settings, normalize_database_url  # noqa: E402
from connector.links import sign_dashboard_link  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from connector.web import create_app  # noqa: E402

FILL = """
INSERT INTO events (connection_id, event_name, event_id, event_time, payload, status,
                    attempts, send_count, next_attempt_at, created_at, sent_at,
                    fbtrace_id, events_received, order_ref, last_error)
SELECT CASE WHEN g % 1000 < :big_permille THEN CAST(:big AS varchar)
            ELSE o.others[1 + g % cardinality(o.others)] END,
       CASE WHEN g % 3 = 0 THEN 'InitiateCheckout' ELSE 'Purchase' END,
       g::text,
       t, p.payload,
       CASE WHEN g % 50 = 0 THEN 'dead' WHEN g % 70 = 0 THEN 'held'
            WHEN t > now() - interval '10 minutes' THEN 'pending' ELSE 'sent' END,
       1, 1, t, t,
       CASE WHEN g % 50 = 0 OR g % 70 = 0 THEN NULL ELSE t + interval '2 seconds' END,
       'Trace' || g, 1,
       CASE WHEN g % 3 = 0 THEN NULL ELSE g::text END,
       CASE WHEN g % 50 = 0 THEN 'invalid: Meta refused the phone number'
            WHEN g % 70 = 0 THEN 'held: the connection needs Meta reconnected' END
FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint)) AS g
CROSS JOIN LATERAL (
    SELECT now() - (random() * interval '60 days') AS t
) AS tt
CROSS JOIN (
    SELECT array_agg(id ORDER BY id) AS others FROM connections WHERE id <> :big
) AS o
CROSS JOIN (SELECT CAST(:payload AS json) AS payload) AS p
"""

PAYLOAD = (
    '{"event_name": "Purchase", "event_time": 1760000000, "event_id": "1", '
    '"action_source": "website", "event_source_url": "https://big.myshopify.com/", '
    '"user_data": {"em": ["' + "a" * 64 + '"], "ph": ["' + "b" * 64 + '"], '
    '"client_ip_address": "203.0.113.7", "client_user_agent": "Mozilla/5.0"}, '
    '"custom_data": {"value": 19.99, "currency": "EUR"}}'
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--share", type=float, default=0.2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--keep", action="store_true", help="keep the filled schema")
    parser.add_argument(
        "--schema", help="time pages on a schema an earlier --keep run filled"
    )
    args = parser.parse_args()

    base = normalize_database_url(args.database_url)
    schema = args.schema or f"bench_dash_{secrets.token_hex(4)}"
    admin = create_engine(base)
    if not args.schema:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        if not args.schema:
            fill(url, args)
        time_pages(url, args)
    finally:
        print(f"schema: {schema}" + (" (kept)" if args.keep or args.schema else ""))
        if not (args.keep or args.schema):
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def fill(url: str, args: argparse.Namespace) -> None:
    migrate.upgrade(url)
    engine = create_engine(url)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO connections (id, platform, store, status, settings, pixel_id, "
                "installed_at, created_at, updated_at) "
                "SELECT md5(g::text)::varchar(24), 'shopify', "
                "CASE WHEN g = 0 THEN 'big.myshopify.com' ELSE 'shop' || g || '.myshopify.com' END, "
                "'active', '{}', '1234567890', now(), now(), now() "
                "FROM generate_series(0, :n - 1) AS g"
            ),
            {"n": args.connections},
        )
        big = conn.execute(
            text("SELECT id FROM connections WHERE store = 'big.myshopify.com'")
        ).scalar_one()
    step = 100_000
    for start in range(1, args.events + 1, step):
        with engine.begin() as conn:
            conn.execute(
                text(FILL),
                {
                    "start": start,
                    "stop": min(start + step - 1, args.events),
                    "big_permille": int(args.share * 1000),
                    "big": big,
                    "payload": PAYLOAD,
                },
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE events"))
        total, mine = conn.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE connection_id = :c) FROM events"
            ),
            {"c": big},
        ).one()
    engine.dispose()
    print(
        f"filled {total} events ({mine} for the benchmarked store) in "
        f"{time.perf_counter() - started:.0f} s"
    )


def time_pages(url: str, args: argparse.Namespace) -> None:
    engine = create_engine(url)
    with engine.connect() as conn:
        big = conn.execute(
            text("SELECT id FROM connections WHERE store = 'big.myshopify.com'")
        ).scalar_one()
    engine.dispose()

    settings = Settings(
        env="test",
        instance_path=Path("/tmp") / "bench-dashboard-instance",  # noqa: S108
        database_url=url,
        encryption_keys=(Fernet.generate_key().decode(),),
        secret_key=secrets.token_hex(16),
        app_url="https://connector.example",
        admin_password="bench",  # noqa: S106 - a throwaway password for a local run
    )
    runtime = Runtime.from_settings(settings)
    client = create_app(runtime=runtime).test_client()
    token = sign_dashboard_link(settings.secret_key, big, datetime.now(UTC))
    with runtime.sessions() as s:
        some_event = s.execute(
            text(
                "SELECT id FROM events WHERE connection_id = :c ORDER BY id DESC LIMIT 1"
            ),
            {"c": big},
        ).scalar_one()
    pages = {
        "overview": f"/admin/connections/{big}?t={token}",
        "events": f"/admin/connections/{big}/events?t={token}",
        "events, older page": f"/admin/connections/{big}/events?t={token}&before={some_event - 5000}",
        "events, status sent": f"/admin/connections/{big}/events?t={token}&status=sent",
        "events, search order": f"/admin/connections/{big}/events?t={token}&q=%23{some_event - 3}",
        "events, search trace": f"/admin/connections/{big}/events?t={token}&q=Trace{some_event - 7}",
        "event detail": f"/admin/connections/{big}/events/{some_event}?t={token}",
        "match quality": f"/admin/connections/{big}/quality?t={token}",
        "settings": f"/admin/connections/{big}/settings?t={token}",
        "pixel setup": f"/admin/connections/{big}/pixel?t={token}",
        "operator: every store": "/admin",
    }
    print(
        f"{'page':<24} {'min':>7} {'median':>7} {'p95':>7} {'max':>7}  (ms, {args.runs} runs)"
    )
    worst = 0.0
    for name, path in pages.items():
        auth = ("admin", "bench") if path == "/admin" else None
        rv = client.get(path, auth=auth)  # warm-up, and a check the page answers
        assert rv.status_code == 200, (name, rv.status_code)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            rv = client.get(path, auth=auth)
            times.append((time.perf_counter() - t0) * 1000)
            assert rv.status_code == 200
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        worst = max(worst, p95)
        print(
            f"{name:<24} {times[0]:7.1f} {statistics.median(times):7.1f} {p95:7.1f} {times[-1]:7.1f}"
        )
    runtime.close()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"worst p95: {worst:.1f} ms (target < 300 ms); load average {load}")


if __name__ == "__main__":
    main()
