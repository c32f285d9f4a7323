"""The canonical event and its two serialisations (Meta's and our own JSON)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from connector.events import CanonicalEvent, Content, CustomData, UserData

EMAIL_HASH = "a" * 64


def make_event(**overrides: object) -> CanonicalEvent:
    base = CanonicalEvent(
        event_name="Purchase",
        event_id="450789469",
        event_time=datetime(2026, 11, 20, 12, 0, tzinfo=timezone(timedelta(hours=-5))),
        action_source="website",
        event_source_url="https://shop.example/checkout",
        user_data=UserData(
            em=(EMAIL_HASH,),
            client_ip_address="203.0.113.9",
            client_user_agent="UA",
            fbp="fb.1.1.2",
        ),
        custom_data=CustomData(
            value=Decimal("199.65"),
            currency="usd",
            contents=(
                Content(id="39072856", quantity=2, item_price=Decimal("199.00")),
            ),
            content_ids=("39072856",),
            num_items=2,
            order_id="450789469",
        ),
        order_ref="450789469",
        customer_ref="207119551",
    )
    return base.replace(**overrides)


def test_to_meta_is_the_capi_event_object() -> None:
    """The Meta form has unix seconds, hashed lists, plain strings, and no internal refs."""
    assert {
        "event_name": "Purchase",
        "event_time": int(datetime(2026, 11, 20, 17, 0, tzinfo=UTC).timestamp()),
        "event_id": "450789469",
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "em": [EMAIL_HASH],
            "client_ip_address": "203.0.113.9",
            "client_user_agent": "UA",
            "fbp": "fb.1.1.2",
        },
        "custom_data": {
            "value": 199.65,
            "currency": "USD",
            "contents": [{"id": "39072856", "quantity": 2, "item_price": 199.0}],
            "content_ids": ["39072856"],
            "content_type": "product",
            "num_items": 2,
            "order_id": "450789469",
        },
    } == make_event().to_meta()


def test_json_round_trip_keeps_every_field() -> None:
    """Our own JSON reads back to an equal event, cents and time zone included."""
    event = make_event()
    again = CanonicalEvent.from_json(json.loads(json.dumps(event.to_json())))
    assert event.custom_data == again.custom_data
    assert event.user_data == again.user_data
    assert event.event_time == again.event_time
    assert event == again


def test_naive_event_time_is_refused() -> None:
    """A naive datetime would be read as local time somewhere: refuse it."""
    with pytest.raises(ValueError, match="timezone-aware"):
        make_event(event_time=datetime(2026, 1, 1))  # noqa: DTZ001


def test_empty_user_data_has_no_identifier() -> None:
    """Meta needs at least one identifier; an empty UserData says it has none."""
    assert not UserData().has_identifier()
    assert UserData(fbp="fb.1.1.1").has_identifier()
    assert {} == UserData().to_meta()
