"""A local fake of Meta's Conversions API endpoint, ``POST /{version}/{pixel_id}/events``.

Built from Meta's published docs: the main-body parameters (``data`` of at most 1000 events,
``access_token``, ``appsecret_proof``, ``test_event_code``, ``partner_agent``), the server event
and customer information parameters, the Graph error shape and codes, and the rule that one
invalid event (or one older than 7 days) rejects the whole request. ``make_app`` returns a
Flask app other fakes can add blueprints to; ``FakeGraph`` is its state, shared and thread-safe.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

MAX_EVENTS = 1000
SEVEN_DAYS = 7 * 24 * 3600
FUTURE_SLACK = 60
ACTION_SOURCES = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)
HASHED_KEYS = (
    "em",
    "ph",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
)
#: keys that identify a customer on their own (client_user_agent only with an IP)
IDENTIFYING_KEYS = (*HASHED_KEYS, "fbc", "fbp", "client_ip_address")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

#: Graph's own texts for the rate limits the fake can play
RATE_LIMIT_MESSAGES = {
    4: "(#4) Application request limit reached",
    17: "(#17) User request limit reached",
    32: "(#32) Page request limit reached",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    80004: "(#80004) There have been too many calls to this ad-account. Wait a bit and try again.",
}


@dataclass(frozen=True)
class Received:
    """One event Meta counted."""

    pixel_id: str
    event_id: str | None
    event_name: str
    test_event_code: str | None
    partner_agent: str | None


@dataclass
class Fault:
    """What the next ``remaining`` calls do instead of answering normally."""

    kind: str  # timeout | 500 | html | rate_limit | revoked | delay | short
    remaining: int
    code: int = 17
    seconds: float = 0.0
    #: the HTTP status of a rate_limit answer (Graph uses 400, and 403 for some limits)
    status: int = 400


@dataclass
class FakeGraph:
    """The fake's state: valid tokens, what it received, and the faults it will play."""

    tokens: set[str] = field(default_factory=lambda: {"meta-token"})
    #: pixels that exist; None accepts any all-digit id
    pixels: set[str] | None = None
    #: when set, every call must carry a valid appsecret_proof
    app_secret: str | None = None
    #: how long a "timeout" fault sleeps before it answers (longer than the client waits)
    timeout_seconds: float = 1.0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.calls = 0
        self.bodies: list[dict[str, Any]] = []
        self.keep_bodies = False
        self.in_flight = 0
        self._faults: list[Fault] = []
        self._random_fraction = 0.0
        self._random_kinds: tuple[str, ...] = ()
        self._rng = random.Random(0)

    # -- steering ---------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        kind: str,
        *,
        code: int = 17,
        seconds: float = 0.0,
        status: int = 400,
    ) -> None:
        """Make the next ``n`` calls time out, answer 500, rate-limit, say 190, stall or undercount."""
        if kind not in {
            "timeout",
            "500",
            "html",
            "rate_limit",
            "revoked",
            "delay",
            "short",
        }:
            raise ValueError(f"unknown fault {kind!r}")
        with self.lock:
            self._faults.append(
                Fault(kind=kind, remaining=n, code=code, seconds=seconds, status=status)
            )

    def fail_randomly(
        self,
        fraction: float,
        kinds: Iterable[str] = ("timeout", "500"),
        *,
        seed: int = 0,
    ) -> None:
        """Fail this fraction of calls with one of ``kinds``, drawn from a seeded generator."""
        with self.lock:
            self._random_fraction = fraction
            self._random_kinds = tuple(kinds)
            self._rng = random.Random(seed)

    def revoke(self, token: str) -> None:
        with self.lock:
            self.tokens.discard(token)

    def _next_fault(self) -> Fault | None:
        with self.lock:
            while self._faults:
                fault = self._faults[0]
                if fault.remaining <= 0:
                    self._faults.pop(0)
                    continue
                fault.remaining -= 1
                return fault
            if self._random_fraction and self._rng.random() < self._random_fraction:
                return Fault(kind=self._rng.choice(self._random_kinds), remaining=0)
        return None

    # -- reading back -----------------------------------------------------------------

    def event_ids(self, pixel_id: str | None = None) -> list[str | None]:
        with self.lock:
            return [
                r.event_id
                for r in self.received
                if pixel_id is None or r.pixel_id == pixel_id
            ]


def graph_error(
    status: int,
    message: str,
    *,
    type: str = "OAuthException",
    code: int,
    subcode: int | None = None,
    is_transient: bool = False,
    user_title: str | None = None,
    user_msg: str | None = None,
) -> Response:
    """Graph's error shape, as its error-handling guide shows it."""
    err: dict[str, Any] = {
        "message": message,
        "type": type,
        "code": code,
        "is_transient": is_transient,
        "fbtrace_id": _trace_id(),
    }
    if subcode is not None:
        err["error_subcode"] = subcode
    if user_title is not None:
        err["error_user_title"] = user_title
    if user_msg is not None:
        err["error_user_msg"] = user_msg
    return Response(json.dumps({"error": err}), status, mimetype="application/json")


def _trace_id() -> str:
    return secrets.token_urlsafe(8)


def _invalid(title: str, msg: str, subcode: int) -> Response:
    # Conversions API event errors: "Invalid parameter", code 100, a 2804xxx subcode.
    return graph_error(
        400,
        "Invalid parameter",
        code=100,
        subcode=subcode,
        user_title=title,
        user_msg=msg,
    )


def validate_event(event: Any, index: int, now: float) -> Response | None:
    """Meta's per-event checks; the first failure rejects the request."""
    where = f"data[{index}]"
    if not isinstance(event, Mapping):
        return _invalid("Invalid event", f"{where} must be an object", 2804019)
    name = event.get("event_name")
    if not isinstance(name, str) or not name:
        return _invalid(
            "Missing Event Name", f"{where}: event_name is required", 2804008
        )
    event_time = event.get("event_time")
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        return _invalid(
            "Invalid Event Time",
            f"{where}: event_time must be a Unix timestamp in seconds",
            2804008,
        )
    if event_time < now - SEVEN_DAYS:
        return _invalid(
            "Event Timestamp Too Old",
            f"{where}: The timestamp for this event is too far in the past. Events need "
            "to be logged within 7 days of their occurrence.",
            2804003,
        )
    if event_time > now + FUTURE_SLACK:
        return _invalid(
            "Event Timestamp In The Future",
            f"{where}: The timestamp for this event is in the future.",
            2804004,
        )
    source = event.get("action_source")
    if source not in ACTION_SOURCES:
        return _invalid(
            "Invalid Action Source",
            f"{where}: action_source must be one of {sorted(ACTION_SOURCES)}",
            2804008,
        )
    user_data = event.get("user_data")
    if not isinstance(user_data, Mapping):
        return _invalid("Missing User Data", f"{where}: user_data is required", 2804050)
    for key in HASHED_KEYS:
        if key not in user_data:
            continue
        values = user_data[key]
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not all(
            isinstance(v, str) and SHA256_HEX.fullmatch(v) for v in values
        ):
            return _invalid(
                "Invalid Hashed Parameter",
                f"{where}: user_data.{key} must be SHA-256 hashed (64 lowercase hex)",
                2804024,
            )
    has_identifier = any(
        user_data.get(k) for k in IDENTIFYING_KEYS if k != "client_ip_address"
    ) or bool(user_data.get("client_ip_address") and user_data.get("client_user_agent"))
    if not has_identifier:
        return _invalid(
            "Insufficient Customer Information",
            f"{where}: The event doesn't have sufficient customer information parameters.",
            2804050,
        )
    if source == "website":
        if not event.get("event_source_url"):
            return _invalid(
                "Missing Event Source URL",
                f"{where}: website events require event_source_url",
                2804008,
            )
        if not user_data.get("client_user_agent"):
            return _invalid(
                "Missing User Agent",
                f"{where}: website events require user_data.client_user_agent",
                2804008,
            )
    return None


def _read_body() -> dict[str, Any] | None:
    # The Business SDK posts a form with data as a JSON string; others post JSON.
    if request.is_json:
        doc = request.get_json(silent=True)
        return doc if isinstance(doc, dict) else None
    form = request.form.to_dict()
    if "data" in form:
        try:
            form["data"] = json.loads(form["data"])
        except ValueError:
            return None
    return form


def make_app(state: FakeGraph | None = None) -> Flask:
    """The fake Graph API as a Flask app; ``app.extensions["fake_graph"]`` is its state."""
    state = state if state is not None else FakeGraph()
    app = Flask(__name__)
    app.extensions["fake_graph"] = state

    @app.post("/<version>/<pixel_id>/events")
    def events(version: str, pixel_id: str) -> Response:
        with state.lock:
            state.calls += 1
            state.in_flight += 1
        try:
            return _handle(state, pixel_id)
        finally:
            with state.lock:
                state.in_flight -= 1

    return app


def _handle(state: FakeGraph, pixel_id: str) -> Response:
    if "access_token" in request.args:
        # Not Meta's rule, ours: a token in the URL ends up in proxy logs.
        return graph_error(400, "fake: access_token must travel in the body", code=100)
    fault = state._next_fault()
    if fault is not None:
        answer = _play(state, fault)
        if answer is not None:
            return answer
    # Meta has been seen to count fewer events than it was sent; the client must notice.
    short = 1 if fault is not None and fault.kind == "short" else 0
    body = _read_body()
    if body is None:
        return graph_error(400, "(#100) The request body could not be parsed", code=100)
    token = body.get("access_token")
    if not token:
        return graph_error(
            400, "An access token is required to request this resource.", code=104
        )
    with state.lock:
        token_ok = token in state.tokens
    if not token_ok:
        return graph_error(
            400,
            "Error validating access token: The session has been invalidated because the "
            "user changed their password or Facebook has changed the session for security reasons.",
            code=190,
            subcode=460,
        )
    if state.app_secret is not None:
        proof = body.get("appsecret_proof")
        if not proof:
            return graph_error(
                400,
                "API calls from the server require an appsecret_proof argument",
                type="GraphMethodException",
                code=100,
            )
        expected = hmac.new(
            state.app_secret.encode(), str(token).encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(str(proof), expected):
            return graph_error(
                400,
                "Invalid appsecret_proof provided in the API argument",
                type="GraphMethodException",
                code=100,
            )
    if not pixel_id.isdigit() or (
        state.pixels is not None and pixel_id not in state.pixels
    ):
        return graph_error(
            400,
            f"Unsupported post request. Object with ID '{pixel_id}' does not exist, cannot be "
            "loaded due to missing permissions, or does not support this operation.",
            type="GraphMethodException",
            code=100,
            subcode=33,
        )
    data = body.get("data")
    if not isinstance(data, list) or not data:
        return _invalid("Missing Data", "The parameter data is required", 2804008)
    if len(data) > MAX_EVENTS:
        return _invalid(
            "Too Many Events",
            f"data: Array size exceeds the limit of {MAX_EVENTS}",
            2804001,
        )
    now = time.time()
    for index, event in enumerate(data):
        problem = validate_event(event, index, now)
        if problem is not None:
            return problem
    test_code = body.get("test_event_code") or None
    agent = body.get("partner_agent") or None
    rows = [
        Received(
            pixel_id=pixel_id,
            event_id=None if e.get("event_id") is None else str(e["event_id"]),
            event_name=e["event_name"],
            test_event_code=test_code,
            partner_agent=agent,
        )
        for e in data
    ]
    with state.lock:
        state.received.extend(rows)
        if state.keep_bodies:
            state.bodies.append(body)
    return Response(
        json.dumps(
            {
                "events_received": len(data) - short,
                "messages": [],
                "fbtrace_id": _trace_id(),
            }
        ),
        200,
        mimetype="application/json",
    )


def _play(state: FakeGraph, fault: Fault) -> Response | None:
    if fault.kind == "timeout":
        # Meta may still count what it got: the answer just comes too late for the client.
        time.sleep(fault.seconds or state.timeout_seconds)
        return None
    if fault.kind == "delay":
        time.sleep(fault.seconds)
        return None
    if fault.kind == "500":
        return graph_error(
            500,
            "An unexpected error has occurred. Please retry your request later.",
            code=2,
            is_transient=True,
        )
    if fault.kind == "html":
        return Response(
            "<html><body>502 Bad Gateway</body></html>", 502, mimetype="text/html"
        )
    if fault.kind == "rate_limit":
        return graph_error(
            fault.status,
            RATE_LIMIT_MESSAGES.get(fault.code, f"(#{fault.code}) rate limit reached"),
            code=fault.code,
            is_transient=True,
        )
    if fault.kind == "revoked":
        return graph_error(
            400,
            "Error validating access token: Session has expired.",
            code=190,
            subcode=463,
        )
    return None
