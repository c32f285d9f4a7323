"""The daily read of Meta's Dataset Quality API, and the hourly coverage recount (worker jobs).

For every active connection with a pixel and a Meta token, once a day:
``GET {META_GRAPH_URL}/{META_API_VERSION}/dataset_quality?dataset_id=<pixel>&fields=web{...}``
with the connection's token (Meta's Dataset Quality API,
https://developers.facebook.com/docs/marketing-api/conversions-api/dataset-quality-api ).
Meta's answer per event name replaces the stored one; its deduplication feedback becomes
connection warnings (connector.quality.dedup_warnings). A token or pixel without access is
recorded as ``no_access`` with Meta's reason and not asked again until the next day or until the
connection's pixel or token changes; a failure to reach Meta is ``error``, tried the next day.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from connector import quality
from connector.errors import GraphError
from connector.meta_oauth import appsecret_proof, graph_error
from connector.platform import PeriodicJob
from connector.runtime import Runtime
from connector.store import quality as store

log = logging.getLogger(__name__)

#: how often the worker looks for connections due (each is read at most daily)
CHECK_INTERVAL_SECONDS = 3600.0
#: how often today's and yesterday's coverage is recounted from the outbox
COVERAGE_INTERVAL_SECONDS = 900.0


def is_no_access(exc: GraphError) -> bool:
    """True when Meta refuses this token or pixel (permissions, unknown object, dead token).

    Graph error codes: 10 and 200-299 permissions, 100 with subcode 33 an object out of reach,
    190 an invalid or expired token, 102 a session problem
    (https://developers.facebook.com/docs/graph-api/guides/error-handling ).
    """
    if exc.code is None:
        return False
    return (
        exc.code in (10, 102, 190)
        or 200 <= exc.code < 300
        or (exc.code, exc.subcode) == (100, 33)
    )


def fetch_dataset_quality(
    runtime: Runtime, http: requests.Session, pixel_id: str, token: str
) -> dict[str, Any]:
    """Meta's answer, as JSON. Raises GraphError (never with the token in its text)."""
    settings = runtime.settings
    params = {
        "dataset_id": pixel_id,
        "fields": quality.DATASET_QUALITY_FIELDS,
        "access_token": token,
    }
    if settings.meta_app_secret:
        params["appsecret_proof"] = appsecret_proof(settings.meta_app_secret, token)
    try:
        response = http.get(
            f"{settings.graph_base}/dataset_quality",
            params=params,
            timeout=settings.http_timeout,
        )
    except requests.RequestException as exc:
        # from None: the cause's text repeats the request URL, which carries the token.
        raise GraphError(
            f"could not reach Meta ({type(exc).__name__})", is_transient=True
        ) from None
    if response.status_code >= 400:
        raise graph_error(response)
    try:
        body = response.json()
    except ValueError:
        raise GraphError(
            f"Meta answered HTTP {response.status_code} without a JSON body",
            is_transient=True,
        ) from None
    if not isinstance(body, dict):
        raise GraphError("Meta answered with JSON that is not an object")
    if isinstance(body.get("error"), Mapping):
        # The Graph API can carry its error object in a 200 answer too.
        raise graph_error(response)
    return body


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """One connection's read: ``ok``, ``no_access`` or ``error``, and why."""

    connection_id: str
    outcome: str
    detail: str | None = None
    events: int = 0
    warnings: int = 0


def check_dataset_quality(
    runtime: Runtime, *, now: datetime, http: requests.Session | None = None
) -> list[CheckResult]:
    """Read Meta's Dataset Quality for every connection due; store answers and warnings."""
    if http is None:
        with requests.Session() as own:
            return check_dataset_quality(runtime, now=now, http=own)
    with runtime.sessions() as session:
        due = store.due_for_meta_check(session, now)
    rv: list[CheckResult] = []
    for conn_id, pixel_id, token in due:
        try:
            body = fetch_dataset_quality(runtime, http, pixel_id, token)
        except GraphError as exc:
            outcome = "no_access" if is_no_access(exc) else "error"
            detail = f"Meta error {exc.code or '-'}: {exc}"
            log.warning(
                "dataset quality of connection %s: %s (code %s)",
                conn_id,
                outcome,
                exc.code,
            )
            with runtime.sessions.begin() as session:
                store.record_meta_check(
                    session,
                    conn_id,
                    pixel_id=pixel_id,
                    token=token,
                    outcome=outcome,
                    detail=detail,
                    now=now,
                )
            rv.append(
                CheckResult(connection_id=conn_id, outcome=outcome, detail=detail)
            )
            continue
        events = quality.parse_dataset_quality(body)
        warnings = quality.dedup_warnings(events)
        with runtime.sessions.begin() as session:
            store.save_meta_scores(
                session, conn_id, pixel_id=pixel_id, events=events, now=now
            )
            store.set_warnings(session, conn_id, warnings, now)
            store.record_meta_check(
                session,
                conn_id,
                pixel_id=pixel_id,
                token=token,
                outcome="ok",
                detail=f"{len(events)} event names",
                now=now,
            )
        rv.append(
            CheckResult(
                connection_id=conn_id,
                outcome="ok",
                events=len(events),
                warnings=len(warnings),
            )
        )
    return rv


def recount_recent_coverage(runtime: Runtime, *, now: datetime) -> int:
    """Recount yesterday's and today's coverage aggregates from the outbox."""
    today = now.astimezone(UTC).date()
    with runtime.sessions.begin() as session:
        return store.refresh_coverage(
            session, since=today - timedelta(days=1), until=today, now=now
        )


def _run_check(runtime: Runtime) -> None:
    check_dataset_quality(runtime, now=datetime.now(UTC))


def _run_recount(runtime: Runtime) -> None:
    recount_recent_coverage(runtime, now=datetime.now(UTC))


def periodic_jobs() -> list[PeriodicJob]:
    """The worker's Dataset Quality read (hourly look, daily per connection) and coverage recount."""
    return [
        PeriodicJob(
            name="meta-dataset-quality",
            interval_seconds=CHECK_INTERVAL_SECONDS,
            run=_run_check,
        ),
        PeriodicJob(
            name="match-coverage-recount",
            interval_seconds=COVERAGE_INTERVAL_SECONDS,
            run=_run_recount,
        ),
    ]
