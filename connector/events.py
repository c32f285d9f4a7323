"""The canonical event: what every adapter produces and the outbox stores (pure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal

PURCHASE: Final = "Purchase"
INITIATE_CHECKOUT: Final = "InitiateCheckout"

#: Meta's ``action_source`` values (Conversions API server event parameters).
ActionSource = Literal[
    "website",
    "app",
    "email",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
]

#: user_data keys Meta wants hashed, each a list of lowercase SHA-256 hex digests.
HASHED_KEYS: Final = (
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
#: user_data keys Meta wants as they are, never hashed.
PLAIN_KEYS: Final = ("client_ip_address", "client_user_agent", "fbc", "fbp")


@dataclass(frozen=True, kw_only=True)
class UserData:
    """Match keys, already normalized and hashed: raw personal data never gets here."""

    em: tuple[str, ...] = ()
    ph: tuple[str, ...] = ()
    fn: tuple[str, ...] = ()
    ln: tuple[str, ...] = ()
    ge: tuple[str, ...] = ()
    db: tuple[str, ...] = ()
    ct: tuple[str, ...] = ()
    st: tuple[str, ...] = ()
    zp: tuple[str, ...] = ()
    country: tuple[str, ...] = ()
    external_id: tuple[str, ...] = ()
    client_ip_address: str | None = None
    client_user_agent: str | None = None
    fbc: str | None = None
    fbp: str | None = None

    def to_meta(self) -> dict[str, Any]:
        """Meta's ``user_data`` object: lists for hashed keys, strings for the rest."""
        rv: dict[str, Any] = {}
        for key in HASHED_KEYS:
            values = getattr(self, key)
            if values:
                rv[key] = list(values)
        for key in PLAIN_KEYS:
            value = getattr(self, key)
            if value:
                rv[key] = value
        return rv

    @classmethod
    def from_meta(cls, data: Mapping[str, Any]) -> UserData:
        """Read a ``user_data`` object back; single strings become one-item tuples."""
        kwargs: dict[str, Any] = {}
        for key in HASHED_KEYS:
            value = data.get(key)
            if value:
                kwargs[key] = (value,) if isinstance(value, str) else tuple(value)
        for key in PLAIN_KEYS:
            value = data.get(key)
            if value:
                kwargs[key] = str(value)
        return cls(**kwargs)

    def has_identifier(self) -> bool:
        """Meta needs at least one customer identifier to match an event."""
        return any(getattr(self, key) for key in (*HASHED_KEYS, *PLAIN_KEYS))


@dataclass(frozen=True, kw_only=True)
class Content:
    """One line of the order, as Meta's ``contents`` wants it."""

    id: str
    quantity: int
    item_price: Decimal | None = None

    def to_meta(self) -> dict[str, Any]:
        rv: dict[str, Any] = {"id": self.id, "quantity": self.quantity}
        if self.item_price is not None:
            rv["item_price"] = float(self.item_price)
        return rv


@dataclass(frozen=True, kw_only=True)
class CustomData:
    """What was bought: Meta's ``custom_data`` for commerce events."""

    value: Decimal | None = None
    currency: str | None = None
    contents: tuple[Content, ...] = ()
    content_ids: tuple[str, ...] = ()
    content_type: str | None = "product"
    num_items: int | None = None
    order_id: str | None = None

    def to_meta(self) -> dict[str, Any]:
        rv: dict[str, Any] = {}
        if self.value is not None:
            # Meta takes a JSON number; Decimal keeps the store's cents exact until here.
            rv["value"] = float(self.value)
        if self.currency:
            rv["currency"] = self.currency.upper()
        if self.contents:
            rv["contents"] = [c.to_meta() for c in self.contents]
        if self.content_ids:
            rv["content_ids"] = list(self.content_ids)
        if self.content_type and (self.contents or self.content_ids):
            rv["content_type"] = self.content_type
        if self.num_items is not None:
            rv["num_items"] = self.num_items
        if self.order_id:
            rv["order_id"] = self.order_id
        return rv

    @classmethod
    def from_meta(cls, data: Mapping[str, Any]) -> CustomData:
        contents = tuple(
            Content(
                id=str(c["id"]),
                quantity=int(c.get("quantity", 1)),
                item_price=_decimal(c.get("item_price")),
            )
            for c in data.get("contents") or ()
        )
        return cls(
            value=_decimal(data.get("value")),
            currency=data.get("currency"),
            contents=contents,
            content_ids=tuple(str(i) for i in data.get("content_ids") or ()),
            content_type=data.get("content_type"),
            num_items=data.get("num_items"),
            order_id=data.get("order_id"),
        )


@dataclass(frozen=True, kw_only=True)
class CanonicalEvent:
    """One server event for Meta, plus the references the store keeps for redaction."""

    event_name: str
    event_id: str
    event_time: datetime
    action_source: ActionSource
    user_data: UserData
    custom_data: CustomData = field(default_factory=CustomData)
    event_source_url: str | None = None
    #: Platform ids kept beside the event (never sent) so privacy requests can find it.
    order_ref: str | None = None
    customer_ref: str | None = None

    def __post_init__(self) -> None:
        if self.event_time.tzinfo is None:
            raise ValueError("event_time must be timezone-aware")

    def to_meta(self) -> dict[str, Any]:
        """The event object exactly as it goes into the ``data`` array of a CAPI request."""
        rv: dict[str, Any] = {
            "event_name": self.event_name,
            "event_time": int(self.event_time.timestamp()),
            "event_id": self.event_id,
            "action_source": self.action_source,
        }
        if self.event_source_url:
            rv["event_source_url"] = self.event_source_url
        rv["user_data"] = self.user_data.to_meta()
        custom = self.custom_data.to_meta()
        if custom:
            rv["custom_data"] = custom
        return rv

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict that :meth:`from_json` reads back to an equal event."""
        rv = self.to_meta()
        rv["event_time"] = self.event_time.astimezone(UTC).isoformat()
        rv["custom_data"] = _custom_json(self.custom_data)
        rv["order_ref"] = self.order_ref
        rv["customer_ref"] = self.customer_ref
        return rv

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CanonicalEvent:
        return cls(
            event_name=data["event_name"],
            event_id=str(data["event_id"]),
            event_time=datetime.fromisoformat(data["event_time"]),
            action_source=data["action_source"],
            event_source_url=data.get("event_source_url"),
            user_data=UserData.from_meta(data.get("user_data") or {}),
            custom_data=CustomData.from_meta(data.get("custom_data") or {}),
            order_ref=data.get("order_ref"),
            customer_ref=data.get("customer_ref"),
        )

    def replace(self, **changes: Any) -> CanonicalEvent:
        return dataclasses.replace(self, **changes)


def _custom_json(custom: CustomData) -> dict[str, Any]:
    # Decimals travel as strings in our own JSON so no cent is lost to a float.
    rv: dict[str, Any] = {
        "value": None if custom.value is None else str(custom.value),
        "currency": custom.currency,
        "contents": [
            {
                "id": c.id,
                "quantity": c.quantity,
                "item_price": None if c.item_price is None else str(c.item_price),
            }
            for c in custom.contents
        ],
        "content_ids": list(custom.content_ids),
        "content_type": custom.content_type,
        "num_items": custom.num_items,
        "order_id": custom.order_id,
    }
    return rv


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))
