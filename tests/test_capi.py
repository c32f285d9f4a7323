"""The Graph client: request bodies, Meta's answers and errors, and the POST over loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from connector.capi import (
    MAX_EVENTS_PER_REQUEST,
    PARTNER_AGENT,
    GraphClient,
    SendResult,
    appsecret_proof,
    build_request_body,
    encode_request_body,
    event_problem,
    failed_event_index,
    parse_response,
)
from connector.config import Settings
from connector.errors import GraphError
from tests.fakes.graph import FakeGraph, make_app
from tests.fakes.server import LiveServer, serve
from tests.test_dispatcher import PIXEL, TOKEN, meta_event

EVENT = meta_event("order-1", event_time=datetime.now(UTC) - timedelta(minutes=1))


# -- build_request_body -------------------------------------------------------------------


def test_the_body_carries_events_token_and_partner_agent() -> None:
    """The token goes in the body with the events and the connector's partner_agent."""
    body = build_request_body([EVENT], access_token="tok")
    assert body == {
        "data": [EVENT],
        "access_token": "tok",
        "partner_agent": PARTNER_AGENT,
    }
    assert PARTNER_AGENT.startswith("capi-connector-")


def test_appsecret_proof_is_the_hmac_of_the_token_keyed_by_the_app_secret() -> None:
    """appsecret_proof is HMAC-SHA256(key=app secret, msg=token), hex, as Graph documents."""
    body = build_request_body([EVENT], access_token="tok", app_secret="shh")
    expected = hmac.new(b"shh", b"tok", hashlib.sha256).hexdigest()
    assert body["appsecret_proof"] == expected == appsecret_proof("tok", "shh")


def test_test_event_code_is_sent_only_when_given() -> None:
    """test_event_code appears only for a connection in test mode."""
    assert "test_event_code" not in build_request_body([EVENT], access_token="t")
    with_code = build_request_body([EVENT], access_token="t", test_event_code="TEST1")
    assert with_code["test_event_code"] == "TEST1"


@pytest.mark.parametrize(
    ("events", "token", "message"),
    [
        pytest.param([], "t", "at least one event", id="no-events"),
        pytest.param(
            [EVENT] * (MAX_EVENTS_PER_REQUEST + 1), "t", "at most 1000", id="too-many"
        ),
        pytest.param([EVENT], "", "access token", id="no-token"),
    ],
)
def test_a_body_meta_would_refuse_is_not_built(
    events: list[dict[str, Any]], token: str, message: str
) -> None:
    """Empty, oversized or tokenless requests fail before they reach the network."""
    with pytest.raises(ValueError, match=message):
        build_request_body(events, access_token=token)


def test_the_body_is_encoded_as_metas_events_reference_shows_it() -> None:
    """A form whose ``data`` is a JSON-encoded string, as in Meta's reference and Business SDK."""
    body = build_request_body(
        [EVENT], access_token="tok&=+", app_secret="s", test_event_code="TEST1"
    )
    fields = parse_qs(encode_request_body(body), strict_parsing=True)
    assert {k: len(v) for k, v in fields.items()} == {
        "data": 1,
        "access_token": 1,
        "appsecret_proof": 1,
        "test_event_code": 1,
        "partner_agent": 1,
    }
    assert json.loads(fields["data"][0]) == [EVENT]
    assert fields["access_token"] == ["tok&=+"]
    assert fields["test_event_code"] == ["TEST1"]
    assert fields["partner_agent"] == [PARTNER_AGENT]


def _website(**changes: Any) -> dict[str, Any]:
    event = json.loads(json.dumps(EVENT))
    for key, value in changes.items():
        if key.startswith("user_data."):
            event["user_data"].pop(key.removeprefix("user_data."))
        elif value is None:
            event.pop(key)
        else:
            event[key] = value
    return event


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        pytest.param(_website(), None, id="complete-website-event"),
        pytest.param(
            _website(action_source="physical_store", event_source_url=None),
            None,
            id="store-event-needs-no-url",
        ),
        pytest.param(_website(event_name=None), "event_name", id="no-name"),
        pytest.param(_website(event_time=1.5e9), "event_time", id="float-time"),
        pytest.param(_website(event_time="1700000000"), "event_time", id="str-time"),
        pytest.param(_website(action_source="web"), "action_source", id="bad-source"),
        pytest.param(_website(action_source=None), "action_source", id="no-source"),
        pytest.param(_website(user_data={}), "user_data", id="empty-user-data"),
        pytest.param(
            _website(event_source_url=None), "event_source_url", id="website-no-url"
        ),
        pytest.param(
            _website(**{"user_data.client_user_agent": None}),
            "client_user_agent",
            id="website-no-user-agent",
        ),
    ],
)
def test_event_problem_names_what_meta_requires(
    event: dict[str, Any], problem: str | None
) -> None:
    """Meta's parameters page: website events need client_user_agent and event_source_url."""
    found = event_problem(event)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


# -- parse_response -----------------------------------------------------------------------


def test_a_success_answer_becomes_a_send_result() -> None:
    """Meta's success shape becomes events_received, messages and fbtrace_id."""
    rv = parse_response(
        200, b'{"events_received": 2, "messages": [], "fbtrace_id": "AbC123"}'
    )
    assert rv == SendResult(events_received=2, messages=(), fbtrace_id="AbC123")


def test_an_error_answer_becomes_a_graph_error_with_every_field() -> None:
    """Graph's error object maps onto GraphError, with the user message kept."""
    body = {
        "error": {
            "message": "Invalid parameter",
            "type": "OAuthException",
            "code": 100,
            "error_subcode": 2804003,
            "is_transient": False,
            "error_user_title": "Event Timestamp Too Old",
            "error_user_msg": "The timestamp for this event is too far in the past.",
            "fbtrace_id": "Xyz",
        }
    }
    rv = parse_response(400, json.dumps(body))
    assert isinstance(rv, GraphError)
    assert (
        rv.code,
        rv.subcode,
        rv.type,
        rv.is_transient,
        rv.fbtrace_id,
        rv.status,
    ) == (
        100,
        2804003,
        "OAuthException",
        False,
        "Xyz",
        400,
    )
    assert "too far in the past" in str(rv)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(502, b"<html>Bad Gateway</html>", id="html"),
        pytest.param(200, b"", id="empty"),
        pytest.param(200, b'{"ok": true}', id="json-without-count"),
        pytest.param(200, b'{"events_received": "2"}', id="count-not-a-number"),
        pytest.param(503, b"[1, 2]", id="json-list"),
    ],
)
def test_an_unreadable_answer_is_a_transient_error(status: int, body: bytes) -> None:
    """Anything but Meta's two shapes is transient: the events are retried, never dropped."""
    rv = parse_response(status, body)
    assert isinstance(rv, GraphError)
    assert rv.is_transient
    assert rv.code is None


@given(status=st.integers(100, 599), body=st.binary(max_size=200))
def test_parse_response_never_raises(status: int, body: bytes) -> None:
    """Whatever comes back, parsing returns a result or an error, never an exception."""
    assert isinstance(parse_response(status, body), SendResult | GraphError)


# -- GraphClient over loopback -------------------------------------------------------------


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraph, LiveServer]]:
    state = FakeGraph(tokens={TOKEN}, app_secret="app-secret")
    state.keep_bodies = True
    with serve(make_app(state)) as server:
        yield state, server


@pytest.fixture
def client(
    graph: tuple[FakeGraph, LiveServer], make_settings: Callable[..., Settings]
) -> Iterator[GraphClient]:
    c = GraphClient(
        make_settings(
            meta_graph_url=graph[1].url, meta_app_secret="app-secret", http_timeout=0.3
        )
    )
    yield c
    c.close()


def test_send_events_posts_to_the_pixel_and_returns_metas_count(
    client: GraphClient, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """The client posts to {graph}/{version}/{pixel}/events and returns what Meta counted."""
    state, _ = graph
    result = client.send_events(PIXEL, TOKEN, [EVENT], test_event_code="TEST9")
    assert result.events_received == 1
    assert result.fbtrace_id
    assert state.event_ids(PIXEL) == ["order-1"]
    assert state.bodies[0]["test_event_code"] == "TEST9"
    assert client.graph_base.endswith("/v25.0")


def test_the_request_on_the_wire_is_json_naming_the_connector(
    client: GraphClient, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """What reaches Meta: one JSON body with data, token and proof; our name as User-Agent."""
    sent: list[requests.PreparedRequest] = []
    client.session.hooks["response"].append(lambda r, *a, **k: sent.append(r.request))
    client.send_events(PIXEL, TOKEN, [EVENT], test_event_code="TEST9")
    (request,) = sent
    assert request.headers["Content-Type"] == "application/json"
    assert str(request.headers["User-Agent"]).startswith("capi-connector-")
    raw = request.body
    assert isinstance(raw, bytes)
    fields = json.loads(raw)
    assert fields["data"] == [EVENT]
    assert fields["access_token"] == TOKEN
    assert fields["appsecret_proof"] == appsecret_proof(TOKEN, "app-secret")
    assert fields["test_event_code"] == "TEST9"
    assert graph[0].bodies[0]["data"] == [EVENT]


@pytest.mark.parametrize(
    ("message", "size", "index"),
    [
        ("Invalid parameter: data[3]: user_data.em must be SHA-256 hashed", 10, 3),
        ("Invalid parameter: events[0]: event_time is too old", 2, 0),
        # an index past the request's end, or two different ones, name nothing usable
        ("Invalid parameter: data[12]: bad", 10, None),
        ("Invalid parameter: data[1] and data[4] are bad", 10, None),
        ("Invalid parameter", 10, None),
    ],
)
def test_metas_error_text_names_the_failing_event(
    message: str, size: int, index: int | None
) -> None:
    """Meta's error_user_msg says which event sank the request; that saves a bisection."""
    assert failed_event_index(GraphError(message, code=100), size) == index


def test_the_token_never_travels_in_the_url(
    client: GraphClient, graph: tuple[FakeGraph, LiveServer]
) -> None:
    """Proxies log URLs: the request's URL carries no access_token."""
    seen: list[str] = []
    client.session.hooks["response"].append(
        lambda r, *a, **k: seen.append(r.request.url)
    )
    client.send_events(PIXEL, TOKEN, [EVENT])
    assert seen
    assert all(TOKEN not in url and "access_token" not in url for url in seen)


@pytest.mark.parametrize(
    ("fault", "code", "transient"),
    [
        pytest.param("500", 2, True, id="500"),
        pytest.param("html", None, True, id="non-json"),
        pytest.param("timeout", None, True, id="timeout"),
        pytest.param("revoked", 190, False, id="token-expired"),
        pytest.param("rate_limit", 17, True, id="rate-limited"),
    ],
)
def test_failures_raise_graph_error(
    client: GraphClient,
    graph: tuple[FakeGraph, LiveServer],
    fault: str,
    code: int | None,
    transient: bool,
) -> None:
    """Every failure mode surfaces as a GraphError with Meta's code and transience."""
    graph[0].fail_next(1, fault)
    graph[0].timeout_seconds = 0.6
    with pytest.raises(GraphError) as info:
        client.send_events(PIXEL, TOKEN, [EVENT])
    assert info.value.code == code
    assert info.value.is_transient is transient


def test_a_wrong_app_secret_is_refused_by_meta(
    graph: tuple[FakeGraph, LiveServer], make_settings: Callable[..., Settings]
) -> None:
    """A proof made with another secret is refused with Graph's GraphMethodException."""
    c = GraphClient(make_settings(meta_graph_url=graph[1].url, meta_app_secret="wrong"))
    try:
        with pytest.raises(GraphError) as info:
            c.send_events(PIXEL, TOKEN, [EVENT])
    finally:
        c.close()
    assert (info.value.code, info.value.type) == (100, "GraphMethodException")


def test_an_unreachable_graph_is_a_transient_error(
    make_settings: Callable[..., Settings],
) -> None:
    """A refused connection is transient and names no secret."""
    with serve(make_app()) as server:
        url = server.url
    c = GraphClient(make_settings(meta_graph_url=url, http_timeout=0.5))
    try:
        with pytest.raises(GraphError) as info:
            c.send_events(PIXEL, "secret-token-value", [EVENT])
    finally:
        c.close()
    assert info.value.is_transient
    assert "secret-token-value" not in str(info.value)


def test_a_session_can_be_given(make_settings: Callable[..., Settings]) -> None:
    """Callers may bring their own requests.Session, which the client then uses."""
    session = requests.Session()
    c = GraphClient(make_settings(), http=session)
    assert c.session is session
    c.close()


@pytest.mark.parametrize(
    "pixel", ["12a", "../me", ""], ids=["letters", "path", "empty"]
)
def test_a_pixel_id_that_is_not_digits_is_refused(
    client: GraphClient, pixel: str
) -> None:
    """The pixel id becomes part of the URL path; anything but digits is refused."""
    with pytest.raises(ValueError, match="digits"):
        client.send_events(pixel, TOKEN, [EVENT])
