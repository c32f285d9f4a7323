"""A fake Facebook Login + Graph API for the connect flow, built from Meta's documented answers.

Routes (``{version}`` is any ``vNN.N``):

- ``GET /{version}/dialog/oauth``: the login dialog. It "logs in" :attr:`FakeMeta.user` and
  redirects to ``redirect_uri`` with ``code`` and ``state`` (and Meta's ``#_=_`` fragment), or
  with ``error_reason=user_denied&error=access_denied&error_description=Permissions+error``.
- ``GET /{version}/oauth/access_token``: the code exchange (short-lived token) and
  ``grant_type=fb_exchange_token`` (long-lived token), answering
  ``{"access_token", "token_type": "bearer", "expires_in"}`` or an ``OAuthException``.
- ``GET /{version}/debug_token``: ``{"data": {...}}`` with ``is_valid``, ``expires_at``,
  ``data_access_expires_at``, ``scopes`` and, for a dead token, ``error``.
- ``GET /{version}/me/businesses``, ``/{business}/owned_pixels``, ``/me/adaccounts``,
  ``/{ad_account}/adspixels``: cursor-paged ``{"data": [...], "paging": {...}}``.

Reads take the token from the ``access_token`` query parameter, as Graph's reference
pages and the Business SDK send it, and check ``appsecret_proof`` (required when
:attr:`FakeMeta.require_proof` is set), as an app with "Require App Secret" switched on does.
Facebook Login's manual flow documents the token exchanges as GET with query parameters;
that is all this fake takes. :func:`blueprint` adds these routes to another fake
(the Graph events endpoint) so one server plays all of Meta.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, jsonify, redirect, request

SHORT_LIVED_SECONDS = 5400
LONG_LIVED_SECONDS = 5183944
DATA_ACCESS_SECONDS = 90 * 24 * 3600
CODE_TTL_SECONDS = 600


@dataclass
class FakeUser:
    """The person who logs in at the dialog, and what they can reach."""

    user_id: str = "10000000001"
    #: each {"id", "name", "pixels": [{"id", "name"}]}
    businesses: list[dict[str, Any]] = field(default_factory=list)
    #: each {"id": "act_...", "name", "pixels": [{"id", "name"}]}
    ad_accounts: list[dict[str, Any]] = field(default_factory=list)
    #: the person presses Cancel in the dialog
    denies: bool = False
    #: the permissions they leave switched on (None: all that were asked for)
    grants: tuple[str, ...] | None = None


@dataclass
class TokenRecord:
    kind: str  # "short" | "long"
    user_id: str
    scopes: tuple[str, ...]
    expires_at: int
    data_access_expires_at: int
    issued_at: int
    valid: bool = True
    error_subcode: int | None = None


@dataclass
class CodeRecord:
    redirect_uri: str
    scopes: tuple[str, ...]
    user_id: str
    issued_at: float
    used: bool = False


@dataclass
class FakeMeta:
    """The fake's world: the app, the person logging in, and every code and token issued."""

    app_id: str = "987654321012345"
    app_secret: str = "fake-meta-app-secret"
    app_name: str = "Conversions connector (test)"
    user: FakeUser = field(default_factory=FakeUser)
    require_proof: bool = True
    page_size: int = 25
    clock: Callable[[], float] = time.time
    codes: dict[str, CodeRecord] = field(default_factory=dict)
    tokens: dict[str, TokenRecord] = field(default_factory=dict)
    #: (method, path) of every request, in order
    calls: list[tuple[str, str]] = field(default_factory=list)
    #: the events endpoint's set of valid tokens, kept in step with issues and revocations
    graph_tokens: set[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue_token(
        self,
        kind: str = "long",
        *,
        scopes: tuple[str, ...] = ("ads_management", "business_management"),
        expires_in: int | None = None,
        user_id: str | None = None,
    ) -> str:
        """A token as Meta would issue it; tests also use it to seed stored connections."""
        now = int(self.clock())
        if expires_in is None:
            expires_in = LONG_LIVED_SECONDS if kind == "long" else SHORT_LIVED_SECONDS
        prefix = "EAAL" if kind == "long" else "EAAS"
        token = prefix + secrets.token_urlsafe(48)
        self.tokens[token] = TokenRecord(
            kind=kind,
            user_id=user_id or self.user.user_id,
            scopes=scopes,
            expires_at=now + expires_in,
            data_access_expires_at=now + DATA_ACCESS_SECONDS,
            issued_at=now,
        )
        if self.graph_tokens is not None:
            self.graph_tokens.add(token)
        return token

    def revoke(self, token: str, subcode: int = 460) -> None:
        """The person changed their password (460) or removed the app (458)."""
        self.tokens[token].valid = False
        self.tokens[token].error_subcode = subcode
        if self.graph_tokens is not None:
            self.graph_tokens.discard(token)

    def expire_in(self, token: str, seconds: int) -> None:
        self.tokens[token].expires_at = int(self.clock()) + seconds

    def long_lived_tokens(self) -> list[str]:
        return [t for t, rec in self.tokens.items() if rec.kind == "long"]

    def count(self, path_suffix: str) -> int:
        return sum(1 for _, path in self.calls if path.endswith(path_suffix))


def _error(
    message: str,
    code: int,
    *,
    subcode: int | None = None,
    type: str = "OAuthException",
    status: int = 400,
) -> tuple[Response, int]:
    err: dict[str, Any] = {
        "message": message,
        "type": type,
        "code": code,
        "fbtrace_id": "A" + secrets.token_hex(10),
    }
    if subcode is not None:
        err["error_subcode"] = subcode
    return jsonify(error=err), status


def _param(name: str) -> str:
    return request.args.get(name, "")


def _caller_token() -> str:
    return _param("access_token")


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (ValueError, UnicodeDecodeError):
        return -1


def blueprint(state: FakeMeta) -> Blueprint:
    """Facebook Login and the Graph reads of the connect flow, over ``state``."""
    bp = Blueprint("fake_meta", __name__)

    @bp.before_request
    def _record() -> None:
        with state.lock:
            state.calls.append((request.method, request.path))

    @bp.get("/<version>/dialog/oauth")
    def dialog(version: str) -> Any:
        client_id, redirect_uri, nonce = (
            _param("client_id"),
            _param("redirect_uri"),
            _param("state"),
        )
        if client_id != state.app_id:
            return Response(
                "Invalid App ID: the provided app ID does not look like a valid app ID.",
                400,
            )
        if not redirect_uri:
            return Response("The redirect_uri parameter is required.", 400)
        if _param("response_type") not in {"", "code"}:
            return Response("This fake only does the code flow.", 400)
        asked = tuple(s for s in _param("scope").split(",") if s)
        sep = "&" if "?" in redirect_uri else "?"
        if state.user.denies:
            query = urlencode(
                {
                    "error": "access_denied",
                    "error_code": "200",
                    "error_description": "Permissions error",
                    "error_reason": "user_denied",
                    "state": nonce,
                }
            )
            return redirect(f"{redirect_uri}{sep}{query}#_=_")
        granted = (
            asked
            if state.user.grants is None
            else tuple(s for s in asked if s in state.user.grants)
        )
        code = "AQ" + secrets.token_urlsafe(64)
        with state.lock:
            state.codes[code] = CodeRecord(
                redirect_uri=redirect_uri,
                scopes=granted,
                user_id=state.user.user_id,
                issued_at=state.clock(),
            )
        return redirect(
            f"{redirect_uri}{sep}{urlencode({'code': code, 'state': nonce})}#_=_"
        )

    @bp.get("/<version>/oauth/access_token")
    def access_token(version: str) -> Any:
        if _param("client_id") != state.app_id:
            return _error("Error validating application. Invalid application ID.", 101)
        if not hmac.compare_digest(_param("client_secret"), state.app_secret):
            return _error("Error validating client secret.", 1)
        if _param("grant_type") == "fb_exchange_token":
            old = state.tokens.get(_param("fb_exchange_token"))
            if old is None or not old.valid or old.expires_at <= state.clock():
                return _error(
                    "Error validating access token: Session has expired.",
                    190,
                    subcode=463,
                )
            token = state.issue_token("long", scopes=old.scopes, user_id=old.user_id)
            return jsonify(
                access_token=token, token_type="bearer", expires_in=LONG_LIVED_SECONDS
            )
        code = _param("code")
        with state.lock:
            rec = state.codes.get(code)
            if rec is None:
                return _error("Invalid verification code format.", 100)
            if rec.used:
                return _error(
                    "This authorization code has been used.", 100, subcode=36009
                )
            if state.clock() - rec.issued_at > CODE_TTL_SECONDS:
                return _error(
                    "This authorization code has expired.", 100, subcode=36007
                )
            if _param("redirect_uri") != rec.redirect_uri:
                return _error(
                    "Error validating verification code. Please make sure your redirect_uri is "
                    "identical to the one you used in the OAuth dialog request",
                    100,
                    subcode=36008,
                )
            rec.used = True
        token = state.issue_token("short", scopes=rec.scopes, user_id=rec.user_id)
        return jsonify(
            access_token=token, token_type="bearer", expires_in=SHORT_LIVED_SECONDS
        )

    def _check_proof(token: str) -> tuple[Response, int] | None:
        proof = _param("appsecret_proof")
        if not proof:
            if state.require_proof:
                return _error(
                    "API calls from the server require an appsecret_proof argument",
                    100,
                    type="GraphMethodException",
                )
            return None
        want = hmac.new(
            state.app_secret.encode(), token.encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(proof, want):
            return _error(
                "Invalid appsecret_proof provided in the API argument",
                100,
                type="GraphMethodException",
            )
        return None

    @bp.get("/<version>/debug_token")
    def debug_token(version: str) -> Any:
        caller = _caller_token()
        if caller != f"{state.app_id}|{state.app_secret}":
            return _error("Invalid OAuth access token signature.", 190)
        refused = _check_proof(caller)
        if refused:
            return refused
        input_token = _param("input_token")
        rec = state.tokens.get(input_token)
        if rec is None:
            return jsonify(
                data={
                    "error": {"code": 190, "message": "Invalid OAuth access token."},
                    "is_valid": False,
                    "scopes": [],
                }
            )
        data: dict[str, Any] = {
            "app_id": state.app_id,
            "type": "USER",
            "application": state.app_name,
            "data_access_expires_at": rec.data_access_expires_at,
            "expires_at": rec.expires_at,
            "is_valid": rec.valid and rec.expires_at > state.clock(),
            "issued_at": rec.issued_at,
            "scopes": list(rec.scopes),
            "user_id": rec.user_id,
        }
        if not rec.valid:
            data["error"] = {
                "code": 190,
                "message": "Error validating access token: The session has been invalidated "
                "because the user changed their password or Facebook has changed the session "
                "for security reasons.",
                "subcode": rec.error_subcode,
            }
        elif rec.expires_at <= state.clock():
            data["error"] = {
                "code": 190,
                "message": "Error validating access token: Session has expired.",
                "subcode": 463,
            }
        return jsonify(data=data)

    def _user_token() -> TokenRecord | tuple[Response, int]:
        token = _caller_token()
        if not token:
            return _error(
                "An active access token must be used to query information about the current user.",
                2500,
            )
        refused = _check_proof(token)
        if refused:
            return refused
        rec = state.tokens.get(token)
        if rec is None:
            return _error("Invalid OAuth access token data.", 190)
        if not rec.valid:
            return _error(
                "Error validating access token: The session has been invalidated.",
                190,
                subcode=rec.error_subcode,
            )
        if rec.expires_at <= state.clock():
            return _error(
                "Error validating access token: Session has expired.", 190, subcode=463
            )
        return rec

    def _page(items: list[dict[str, Any]]) -> Any:
        fields = [f for f in _param("fields").split(",") if f] or ["id"]
        try:
            limit = min(int(_param("limit") or state.page_size), state.page_size)
        except ValueError:
            return _error("(#100) The parameter limit must be a number", 100)
        start = 0
        if _param("after"):
            last = _decode_cursor(_param("after"))
            if last < 0:
                return _error("(#100) Invalid cursor", 100)
            start = last + 1
        chunk = items[start : start + limit]
        body: dict[str, Any] = {
            "data": [{k: it[k] for k in fields if k in it} for it in chunk]
        }
        if chunk:
            paging: dict[str, Any] = {
                "cursors": {
                    "before": _encode_cursor(start),
                    "after": _encode_cursor(start + len(chunk) - 1),
                }
            }
            if start + len(chunk) < len(items):
                query = urlencode(
                    {**request.args.to_dict(), "after": paging["cursors"]["after"]}
                )
                paging["next"] = f"{request.base_url}?{query}"
            body["paging"] = paging
        return jsonify(body)

    @bp.get("/<version>/<node>/<edge>")
    def read_edge(version: str, node: str, edge: str) -> Any:
        rec = _user_token()
        if not isinstance(rec, TokenRecord):
            return rec
        user = state.user
        if node == "me" and edge == "businesses":
            if "business_management" not in rec.scopes:
                return _error(
                    "(#200) Requires business_management permission to manage the object",
                    200,
                )
            return _page([{"id": b["id"], "name": b["name"]} for b in user.businesses])
        if node == "me" and edge == "adaccounts":
            if "ads_management" not in rec.scopes and "ads_read" not in rec.scopes:
                return _error(
                    "(#200) Requires ads_management or ads_read permission", 200
                )
            return _page([{"id": a["id"], "name": a["name"]} for a in user.ad_accounts])
        owners = {b["id"]: b for b in user.businesses} if edge == "owned_pixels" else {}
        if edge == "adspixels":
            owners = {a["id"]: a for a in user.ad_accounts}
        owner = owners.get(node)
        if owner is None:
            return _error(
                f"Unsupported get request. Object with ID '{node}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation.",
                100,
                subcode=33,
                type="GraphMethodException",
            )
        return _page(list(owner.get("pixels") or ()))

    return bp


def make_app(state: FakeMeta | None = None) -> Flask:
    """The fake on its own (tests that also send events add this blueprint to the Graph fake)."""
    app = Flask(__name__)
    app.register_blueprint(blueprint(state or FakeMeta()))
    return app
