"""Webhook bodies waiting for the worker are sealed: compressed, encrypted, bound to their delivery.

connector.crypto.KeyRing.seal/unseal: what is sealed opens only with the same delivery as
context and an untouched token; every configured key opens what it sealed, the first one seals;
``connector keys rotate`` seals waiting bodies again under the newest key, so the old key can go.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from connector import inbox
from connector.config import Settings
from connector.crypto import SEALED_VERSION, KeyRing, keyring
from connector.errors import CryptoError
from connector.runtime import Runtime
from connector.store import queries
from connector.store.models import WebhookBody, WebhookReceipt
from tests.conftest import fixture_bytes
from tests.test_secrets_at_rest import run_cli

ORDER = fixture_bytes("shopify/order_storefront.json")
CONTEXT = inbox.body_context("c0ffee", "b5e4c6a1-delivery")


@pytest.fixture
def ring() -> KeyRing:
    ring = KeyRing()
    ring.install([Fernet.generate_key().decode()])
    return ring


def test_an_order_seals_small_and_unreadable(ring: KeyRing) -> None:
    sealed = ring.seal(ORDER, CONTEXT)
    assert len(sealed) < len(ORDER) / 4
    assert sealed[:1] == SEALED_VERSION
    for plain in (b"bob.norman", b"Norman", b"Louisville", b"16136120707"):
        assert plain not in sealed
    assert ORDER == ring.unseal(sealed, CONTEXT)


@given(data=st.binary(max_size=4096))
def test_whatever_is_sealed_opens_to_the_same_bytes(data: bytes) -> None:
    ring = KeyRing()
    ring.install(["k" * 16 + "0123456789abcdef"])
    assert data == ring.unseal(ring.seal(data, CONTEXT), CONTEXT)


def test_two_seals_of_the_same_body_differ(ring: KeyRing) -> None:
    """A fresh nonce each time: equal bodies are not recognizable at rest."""
    assert ring.seal(ORDER, CONTEXT) != ring.seal(ORDER, CONTEXT)


def test_a_body_opens_only_for_its_own_delivery(ring: KeyRing) -> None:
    sealed = ring.seal(ORDER, CONTEXT)
    for other in (
        inbox.body_context("c0ffee", "another-delivery"),
        inbox.body_context("another-connection", "b5e4c6a1-delivery"),
    ):
        with pytest.raises(CryptoError, match="another delivery"):
            ring.unseal(sealed, other)


@pytest.mark.parametrize("at", [0, 1, 6, 20, -1])
def test_a_changed_byte_is_refused(ring: KeyRing, at: int) -> None:
    sealed = bytearray(ring.seal(ORDER, CONTEXT))
    sealed[at] ^= 0x01
    with pytest.raises(CryptoError):
        ring.unseal(bytes(sealed), CONTEXT)


def test_every_configured_key_opens_what_it_sealed_and_the_first_one_seals() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before, after, alone = KeyRing(), KeyRing(), KeyRing()
    before.install([old])
    after.install([new, old])
    alone.install([new])
    by_old = before.seal(ORDER, CONTEXT)
    assert ORDER == after.unseal(by_old, CONTEXT)
    with pytest.raises(CryptoError, match="CONNECTOR_ENCRYPTION_KEYS"):
        alone.unseal(by_old, CONTEXT)
    moved = after.reseal(by_old, CONTEXT)
    assert ORDER == alone.unseal(moved, CONTEXT)
    assert moved == after.reseal(moved, CONTEXT)  # already under the first key


def test_a_high_entropy_secret_seals_like_a_fernet_key() -> None:
    """The one-click deploy's generated secret (not a Fernet key) serves as well."""
    ring = KeyRing()
    ring.install(["9f2c4e7a1b3d5f60718293a4b5c6d7e8f9a0b1c2"])
    assert ORDER == ring.unseal(ring.seal(ORDER, CONTEXT), CONTEXT)


@pytest.fixture
def waiting_body(runtime: Runtime) -> int:
    """A waiting receipt and its body sealed with the test key, as the web process stores it."""
    with runtime.sessions.begin() as session:
        conn = queries.upsert_connection(session, "shopify", "rotate.myshopify.com")
        receipt = WebhookReceipt(
            platform="shopify",
            connection_id=conn.id,
            delivery_id="delivery-1",
            topic="orders/paid",
            outcome=queries.WAITING,
            received_at=datetime.now(UTC),
        )
        session.add(receipt)
        session.flush()
        session.add(
            WebhookBody(
                receipt_id=receipt.id,
                sealed=keyring.seal(ORDER, inbox.body_context(conn.id, "delivery-1")),
                attempts=0,
                available_at=datetime.now(UTC),
            )
        )
        session.flush()
        return receipt.id


def test_keys_rotate_seals_waiting_bodies_again_under_the_new_key(
    runtime: Runtime, settings: Settings, encryption_key: str, waiting_body: int
) -> None:
    new_key = Fernet.generate_key().decode()
    result = run_cli(settings, [new_key, encryption_key], "keys", "rotate")
    assert 0 == result.exit_code, result.output
    assert "re-sealed 1 webhook body(ies)" in result.output
    with runtime.sessions() as session:
        sealed, connection_id = session.execute(
            select(WebhookBody.sealed, WebhookReceipt.connection_id)
            .join(WebhookReceipt, WebhookReceipt.id == WebhookBody.receipt_id)
            .where(WebhookBody.receipt_id == waiting_body)
        ).one()
    alone = KeyRing()
    alone.install([new_key])
    assert ORDER == alone.unseal(
        sealed, inbox.body_context(connection_id, "delivery-1")
    )
    # Run again: nothing left to move.
    again = run_cli(settings, [new_key, encryption_key], "keys", "rotate")
    assert "re-sealed" not in again.output
