"""Meta Graph client for the Conversions API: request bodies, the POST, answers and errors.

``build_request_body`` and ``parse_response`` are pure; ``GraphClient`` is the only part
that touches the network, through one ``requests.Session`` per worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args
from urllib.parse import urlencode

import requests
from urllib3.exceptions import NameResolutionError, NewConnectionError

from connector import __version__, jsoncodec, metrics
from connector.config import Settings
from connector.errors import GraphError
from connector.events import ActionSource

#: Meta takes at most this many events in one request's ``data`` array
MAX_EVENTS_PER_REQUEST = 1000
#: names the integration in Meta's diagnostics (the ``partner_agent`` main-body parameter)
PARTNER_AGENT = f"capi-connector-{__version__}"
#: the ``action_source`` values Meta's server-event parameters page lists
ACTION_SOURCES = frozenset(get_args(ActionSource))
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"
#: where Meta's error text names the event that sank a request ("data[3]", "events[3]")
_EVENT_INDEX = re.compile(r"\b(?:data|events)\[(\d{1,4})\]")
#: Graph's "this API version is deprecated or retired" (permanent until the setting changes)
DEPRECATED_VERSION_CODE = 2635


def _never_connected(exc: requests.RequestException) -> bool:
    """True when no connection was made (refused, DNS), so nothing can have reached Meta."""
    if not isinstance(exc, requests.ConnectionError):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError | NameResolutionError)


@dataclass(frozen=True, kw_only=True)
class SendResult:
    """Meta accepted the request: how many events it counted, and its trace id."""

    events_received: int
    messages: tuple[str, ...] = ()
    fbtrace_id: str | None = None


def appsecret_proof(access_token: str, app_secret: str) -> str:
    """HMAC-SHA256 of the token keyed by the app secret, as hex (Graph's ``appsecret_proof``)."""
    return hmac.new(
        app_secret.encode(), access_token.encode(), hashlib.sha256
    ).hexdigest()


def build_request_body(
    events: Sequence[Mapping[str, Any] | jsoncodec.Raw],
    *,
    access_token: str,
    app_secret: str | None = None,
    test_event_code: str | None = None,
    partner_agent: str = PARTNER_AGENT,
) -> dict[str, Any]:
    """The parameters of ``POST /{pixel}/events``; the token travels here, never in the URL.

    Raises:
        ValueError: no events, more than Meta takes in one request, or no token.
    """
    if not events:
        raise ValueError("a Conversions API request needs at least one event")
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise ValueError(
            f"Meta takes at most {MAX_EVENTS_PER_REQUEST} events per request, not {len(events)}"
        )
    if not access_token:
        raise ValueError("a Conversions API request needs an access token")
    body: dict[str, Any] = {
        "data": list(events),
        "access_token": access_token,
        "partner_agent": partner_agent,
    }
    if app_secret:
        body["appsecret_proof"] = appsecret_proof(access_token, app_secret)
    if test_event_code:
        body["test_event_code"] = test_event_code
    return body


def encode_request_body(body: Mapping[str, Any]) -> str:
    """The body as Meta's events reference sends it: a form, ``data`` a JSON-encoded string.

    The ``/{pixel}/events`` reference types ``data`` as ``list<JSON-encoded string>`` and shows
    it form-encoded; the Business SDK posts the same. Other parameters are plain strings.
    """
    fields = {
        key: json.dumps(value, separators=(",", ":"))
        if isinstance(value, list | dict)
        else str(value)
        for key, value in body.items()
    }
    return urlencode(fields)


def encode_json_body(body: Mapping[str, Any]) -> bytes:
    """The body as one JSON document: no percent-encoding pass over the events.

    Meta's "Using the API" page shows the request body of ``POST /{pixel}/events`` as a JSON
    object (``{"data": [...], ...}``) and the Graph API takes ``application/json`` bodies:
    https://developers.facebook.com/docs/marketing-api/conversions-api/using-the-api

    Compact UTF-8 (:func:`connector.jsoncodec.dumps`): the document ``json.dumps`` gives with
    ``separators=(",", ":")`` and ``ensure_ascii=False``, several times faster.

    Raises:
        ValueError: a parameter JSON cannot hold (a lone surrogate, an object).
    """
    try:
        return jsoncodec.dumps(body)
    except TypeError as exc:
        # A parameter JSON cannot hold (a lone surrogate in a test event code, say).
        raise ValueError(f"the request body cannot be written as JSON: {exc}") from None


def failed_event_index(error: GraphError, size: int) -> int | None:
    """Which event of a ``size``-event request Meta's refusal names, or None when it names none.

    Meta's event errors (code 100, subcode 2804xxx) say where the bad event sits in the
    ``error_user_msg`` it adds to the message ("data[3]: ..."); naming one saves splitting
    the request in halves to find it.
    """
    found = {int(m) for m in _EVENT_INDEX.findall(str(error))}
    if len(found) != 1:
        return None
    (index,) = found
    return index if 0 <= index < size else None


def event_problem(event: Mapping[str, Any]) -> str | None:
    """Why Meta would refuse this event on its own, or None: the documented required fields.

    One such event rejects the whole request it travels in, so the dispatcher sets it
    aside before the send instead of finding it by splitting the batch.
    """
    name = event.get("event_name")
    if not isinstance(name, str) or not name:
        return "event_name is missing"
    event_time = event.get("event_time")
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        return "event_time is not a Unix timestamp in seconds"
    source = event.get("action_source")
    if source not in ACTION_SOURCES:
        return f"action_source {source!r} is not one Meta accepts"
    user_data = event.get("user_data")
    if not isinstance(user_data, Mapping) or not user_data:
        return "user_data is missing"
    if source == "website":
        # Meta's parameters page: website events require client_user_agent and
        # event_source_url (besides action_source).
        if not event.get("event_source_url"):
            return "a website event needs event_source_url, and this one has none"
        if not user_data.get("client_user_agent"):
            return (
                "a website event needs user_data.client_user_agent (the shopper's browser), "
                "and the store sent none"
            )
    return None


def parse_response(status: int, body: bytes | str) -> SendResult | GraphError:
    """Meta's answer as a result or an error; an unreadable answer is a transient error."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        doc = json.loads(text)
    except ValueError:
        # Proxies and load balancers answer in HTML; nothing says the events were refused.
        return GraphError(
            f"Meta answered HTTP {status} with a body that is not JSON",
            is_transient=True,
            http_status=status,
        )
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return _graph_error(status, doc["error"])
    if 200 <= status < 300 and isinstance(doc, dict):
        received = doc.get("events_received")
        if isinstance(received, int) and not isinstance(received, bool):
            messages = doc.get("messages") or []
            return SendResult(
                events_received=received,
                messages=tuple(str(m) for m in messages)
                if isinstance(messages, list)
                else (str(messages),),
                fbtrace_id=_str_or_none(doc.get("fbtrace_id")),
            )
    return GraphError(
        f"Meta answered HTTP {status} without events_received or an error",
        is_transient=True,
        http_status=status,
    )


def _graph_error(status: int, err: Mapping[str, Any]) -> GraphError:
    message = str(err.get("message") or f"Graph API error (HTTP {status})")
    user_msg = err.get("error_user_msg")
    if user_msg and str(user_msg) not in message:
        # error_user_msg names the offending field; message alone is often "Invalid parameter".
        message = f"{message}: {user_msg}"
    return GraphError(
        message,
        code=_int_or_none(err.get("code")),
        subcode=_int_or_none(err.get("error_subcode")),
        type=_str_or_none(err.get("type")),
        is_transient=err.get("is_transient") is True,
        fbtrace_id=_str_or_none(err.get("fbtrace_id")),
        http_status=status,
    )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


class GraphClient:
    """Talks to Meta's Graph API; one per worker, reusing its connections."""

    def __init__(
        self, settings: Settings, http: requests.Session | None = None
    ) -> None:
        self.settings = settings
        self._given = http
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self.timeout = settings.http_timeout

    @property
    def session(self) -> requests.Session:
        """The calling thread's ``requests.Session`` (the one given, when one was)."""
        if self._given is not None:
            return _named(self._given)
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            # One per thread: a Session's connection pool is not meant to be shared.
            session = _named(requests.Session())
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    @property
    def graph_base(self) -> str:
        """``{META_GRAPH_URL}/{META_API_VERSION}``: where every Graph path starts."""
        return self.settings.graph_base

    def events_url(self, pixel_id: str) -> str:
        if not pixel_id.isdigit():
            # The id becomes part of the URL path; anything but digits is a mistake.
            raise ValueError("a pixel id is digits only")
        return f"{self.graph_base}/{pixel_id}/events"

    def send_events(
        self,
        pixel_id: str,
        access_token: str,
        events: Sequence[Mapping[str, Any] | jsoncodec.Raw],
        *,
        test_event_code: str | None = None,
    ) -> SendResult:
        """POST events to the pixel; the answer, or GraphError.

        Raises:
            GraphError: Meta refused the request, or the network or the answer failed
                (a timeout, a connection error and a non-JSON answer are transient).
            ValueError: the request cannot be built (see ``build_request_body``).
        """
        body = build_request_body(
            events,
            access_token=access_token,
            app_secret=self.settings.meta_app_secret,
            test_event_code=test_event_code,
        )
        url = self.events_url(pixel_id)
        payload = encode_json_body(body)
        started = time.monotonic()
        try:
            rv = self._post(url, payload)
        except GraphError as exc:
            outcome = (
                "refused" if exc.status is not None and exc.status < 500 else "failed"
            )
            metrics.observe_graph_request(
                time.monotonic() - started, len(events), outcome, exc.code
            )
            raise
        metrics.observe_graph_request(time.monotonic() - started, len(events), "ok")
        return rv

    def _post(self, url: str, payload: bytes) -> SendResult:
        try:
            resp = self.session.post(
                url,
                data=payload,
                headers={"Content-Type": JSON_CONTENT_TYPE},
                timeout=self.timeout,
            )
        except requests.ConnectTimeout as exc:
            raise GraphError(
                "could not reach Meta: ConnectTimeout",
                is_transient=True,
                may_have_reached=False,
            ) from exc
        except requests.Timeout as exc:
            raise GraphError(
                f"Meta did not answer within {self.timeout:g} s", is_transient=True
            ) from exc
        except requests.RequestException as exc:
            raise GraphError(
                f"could not reach Meta: {type(exc).__name__}",
                is_transient=True,
                may_have_reached=not _never_connected(exc),
            ) from exc
        rv = parse_response(resp.status_code, resp.content)
        if isinstance(rv, GraphError):
            raise rv
        return rv

    def close(self) -> None:
        if self._given is not None:
            self._given.close()
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


def _named(session: requests.Session) -> requests.Session:
    # A Session names itself python-requests/x; Meta's logs should name the connector.
    agent = str(session.headers.get("User-Agent") or "")
    if not agent or agent.startswith("python-requests/"):
        session.headers["User-Agent"] = PARTNER_AGENT
    return session
