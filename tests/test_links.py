"""Admin links: minutes-long, distinct per signing, bound to one connection (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.links import (
    LINK_TTL,
    link_expiry,
    link_key,
    sign_admin_link,
    verify_admin_link,
)

SECRET = "test-secret-key"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_a_link_lasts_minutes_not_an_hour() -> None:
    """The lifetime is a few minutes: long enough to click, short for a logged copy."""
    assert timedelta(minutes=1) <= LINK_TTL <= timedelta(minutes=15)


def test_two_links_signed_at_once_differ_and_each_verifies() -> None:
    """Each link has its own nonce, so spending one leaves the other usable."""
    first, second = (sign_admin_link(SECRET, "conn1", NOW) for _ in range(2))
    assert first != second
    assert link_key(first) != link_key(second)
    for token in (first, second):
        assert verify_admin_link(SECRET, "conn1", token, NOW)


@pytest.mark.parametrize(
    ("connection", "at", "secret", "ok"),
    [
        pytest.param("conn1", NOW + LINK_TTL, SECRET, True, id="last-second"),
        pytest.param(
            "conn1", NOW + LINK_TTL + timedelta(seconds=1), SECRET, False, id="expired"
        ),
        pytest.param("conn2", NOW, SECRET, False, id="other-connection"),
        pytest.param("conn1", NOW, "another-secret", False, id="other-secret"),
    ],
)
def test_a_link_verifies_only_for_its_connection_and_lifetime(
    connection: str, at: datetime, secret: str, ok: bool
) -> None:
    """Signed for one connection, by this deployment's key, until its expiry."""
    token = sign_admin_link(SECRET, "conn1", NOW)
    assert ok == verify_admin_link(secret, connection, token, at)
    assert NOW + LINK_TTL == link_expiry(token)


@given(st.text(max_size=200))
def test_a_tampered_token_never_verifies(noise: str) -> None:
    """Changing any part of a token (expiry, nonce, mac) fails it."""
    token = sign_admin_link(SECRET, "conn1", NOW)
    expires, nonce, mac = token.split(".")
    for forged in (
        f"{int(expires) + 1}.{nonce}.{mac}",
        f"{expires}.{nonce}x.{mac}",
        f"{expires}.{nonce}.{mac[:-1]}",
        f"{expires}.{mac}",
        noise,
    ):
        if forged != token:
            assert not verify_admin_link(SECRET, "conn1", forged, NOW)
