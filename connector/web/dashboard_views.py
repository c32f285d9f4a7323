"""What the dashboard's pages say: plain-word states, SVG charts, settings forms, pixel code.

Nothing here reads the database or the request; the view functions in
:mod:`connector.web.dashboard` hand it rows and render what it returns. Texts are for store
owners: no internal names, no environment variables, no raw errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from connector.quality import Coverage, estimate_label
from connector.store.dashboard import (
    MATCH_KEYS,
    DayCounts,
    MetaEventView,
    SweepSummary,
)
from connector.store.models import Connection, ConnectionStatus

PAGE_TITLES: Final = {
    "overview": "Overview",
    "events": "Events",
    "quality": "Match quality",
    "settings": "Settings",
    "pixel": "Pixel setup",
}

STATUS_TEXT: Final = {
    "pending": "Waiting to send",
    "sending": "Sending",
    "sent": "Delivered",
    "held": "Held",
    "dead": "Not delivered",
}

#: Meta's customer information parameters, as a store owner would name them
KEY_NAMES: Final = {
    "em": "Email",
    "ph": "Phone",
    "fn": "First name",
    "ln": "Last name",
    "ge": "Gender",
    "db": "Date of birth",
    "ct": "City",
    "st": "State or province",
    "zp": "Postal code",
    "country": "Country",
    "external_id": "Customer id",
    "client_ip_address": "IP address",
    "client_user_agent": "Browser (user agent)",
    "fbc": "Click id (fbc)",
    "fbp": "Browser id (fbp)",
}

#: why an event was not delivered, by its reason's kind, in a store owner's words
REASONS: Final = {
    # the kinds the worker writes first in last_error (connector.retry.Dead, holds)
    "invalid": "Meta refused the event as invalid.",
    "too_old": "Older than Meta accepts (7 days), so Meta would refuse it.",
    "future": "Dated in the future, so Meta would refuse it.",
    "held": "Held until Meta can receive it again.",
}


def reason_text(kind: str) -> str:
    """A sentence for a reason kind; an unknown kind says so plainly, never raw text."""
    return REASONS.get(kind, "Meta did not accept the event.")


def store_name(conn: Connection) -> str:
    """The store as its owner knows it: the shop domain or the site's host."""
    return re.sub(r"^https?://", "", conn.store).rstrip("/")


@dataclass(frozen=True, kw_only=True)
class State:
    """The connection's state in plain words, and the one action that fixes it."""

    key: str  # sending | reconnect | paused | test | no_pixel | uninstalled
    headline: str
    detail: str
    action_label: str | None = None
    action_url: str | None = None
    tone: str = "ok"  # ok | warn | bad


def connection_state(
    conn: Connection,
    *,
    meta_connect_url: str | None,
    settings_url: str,
    operator: bool,
) -> State:
    """Sending / needs Meta reconnected / paused / test mode, with what to do next."""
    no_meta_app = "Signing in to Meta is not available on this server yet; " + (
        "set up the Meta app for this deployment."
        if operator
        else "ask the person who runs your connector to set it up."
    )
    if conn.status == ConnectionStatus.UNINSTALLED:
        return State(
            key="uninstalled",
            headline="Paused: the app was removed from the store",
            detail="Nothing is sent. Install the app again to resume; events are kept.",
            tone="bad",
        )
    if conn.status == ConnectionStatus.NEEDS_RECONNECT:
        return State(
            key="reconnect",
            headline="Needs Meta reconnected",
            detail="Meta no longer accepts the connector's access. Events are held, not lost, "
            "and are sent as soon as you reconnect."
            + ("" if meta_connect_url else " " + no_meta_app),
            action_label="Reconnect Meta" if meta_connect_url else None,
            action_url=meta_connect_url,
            tone="bad",
        )
    if conn.status == ConnectionStatus.DISCONNECTED or not conn.meta_token:
        return State(
            key="paused",
            headline="Paused: Meta is not connected",
            detail="Events are kept and wait until a Meta account is connected."
            + ("" if meta_connect_url else " " + no_meta_app),
            action_label="Connect Meta" if meta_connect_url else None,
            action_url=meta_connect_url,
            tone="warn",
        )
    if not conn.pixel_id:
        return State(
            key="no_pixel",
            headline="Paused: no pixel chosen",
            detail="Choose the Meta pixel that should receive your store's events.",
            action_label="Choose a pixel" if meta_connect_url else None,
            action_url=meta_connect_url,
            tone="warn",
        )
    if conn.test_event_code:
        return State(
            key="test",
            headline="Test mode",
            detail="Events go to Meta's Test events tab only; they do not count for your ads.",
            action_label="Go live",
            action_url=settings_url
            + ("&" if "?" in settings_url else "?")
            + "focus=live",
            tone="warn",
        )
    return State(
        key="sending",
        headline="Sending",
        detail=f"Orders and checkouts go to Meta pixel {conn.pixel_id}.",
    )


@dataclass(frozen=True, kw_only=True)
class WebhookHealth:
    managed: str  # app | hand
    text: str
    checked_at: datetime | None = None
    problem: bool = False


def webhook_health(conn: Connection) -> WebhookHealth:
    """Who keeps the store's webhooks, and whether the app's are all in place."""
    s = conn.settings or {}
    if conn.platform == "shopify" and s.get("shopify_app"):
        subs = s.get("shopify_webhooks") or {}
        n = len(subs) if isinstance(subs, Mapping) else 0
        at = _when(s.get("shopify_webhooks_at"))
        if n:
            return WebhookHealth(
                managed="app",
                text=f"Managed by the app: {n} subscriptions in place, checked daily.",
                checked_at=at,
            )
        return WebhookHealth(
            managed="app",
            text="Managed by the app: the subscriptions are being set up; the daily check repairs them.",
            checked_at=at,
            problem=True,
        )
    hooks = s.get("webhooks")
    if conn.platform == "woocommerce" and isinstance(hooks, Mapping):
        at = _when(hooks.get("checked_at"))
        status = hooks.get("status")
        if status == "ready":
            return WebhookHealth(
                managed="app",
                text="Managed by the app: the store's webhooks are in place.",
                checked_at=at,
            )
        if status == "failed":
            return WebhookHealth(
                managed="app",
                text="Managed by the app: setting up the store's webhooks failed; the connector keeps retrying.",
                checked_at=at,
                problem=True,
            )
        return WebhookHealth(
            managed="app", text="Managed by the app: being set up.", checked_at=at
        )
    return WebhookHealth(
        managed="hand",
        text="Managed by hand: the store's webhooks were set up in the store's admin, "
        "so the app does not change them.",
    )


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# -- charts ------------------------------------------------------------------------------

SERIES: Final = (
    ("delivered", "Delivered", "#1a7f37"),
    ("waiting", "Waiting", "#6e7781"),
    ("held", "Held", "#9a6700"),
    ("dead", "Not delivered", "#cf222e"),
)


@dataclass(frozen=True, kw_only=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True, kw_only=True)
class Chart:
    """Geometry for an SVG chart the templates draw (``dashboard/_charts.html``)."""

    width: int
    height: int
    pad: int
    peak: int
    bars: list[Bar]
    first: str
    last: str
    description: str
    #: a line chart's points, "x,y x,y ..."
    points: str = ""


def delivery_chart(days: Sequence[DayCounts]) -> Chart:
    """A stacked bar per day: delivered, waiting, held, not delivered."""
    width, height, pad = 600, 220, 30
    peak = max((d.seen for d in days), default=0) or 1
    bar_w = (width - pad) / max(len(days), 1)
    bars: list[Bar] = []
    for i, d in enumerate(days):
        x = pad + i * bar_w
        y = float(height - pad)
        for key, label, colour in SERIES:
            n = getattr(d, key)
            if not n:
                continue
            h = (height - 2 * pad) * n / peak
            y -= h
            bars.append(
                Bar(
                    x=round(x + 1, 1),
                    y=round(y, 1),
                    width=round(max(bar_w - 2, 1), 1),
                    height=round(h, 1),
                    colour=colour,
                    title=f"{d.day.isoformat()}: {n} {label.lower()}",
                )
            )
    total = sum(d.seen for d in days)
    delivered = sum(d.delivered for d in days)
    return Chart(
        width=width,
        height=height,
        pad=pad,
        peak=peak,
        bars=bars,
        first=_short(days[0].day) if days else "",
        last=_short(days[-1].day) if days else "",
        description=f"{total} events in {len(days)} days, {delivered} delivered.",
    )


def _short(d: date) -> str:
    return d.strftime("%b %d").replace(" 0", " ")


def coverage_chart(
    daily: Sequence[tuple[date, int, float]], *, what: str = "with email or phone"
) -> Chart | None:
    """A line of the daily share of events ``what`` (email or phone by default), 0-100 %."""
    width, height, pad = 600, 160, 46
    if not daily:
        return None
    step = (width - 2 * pad) / max(len(daily) - 1, 1)
    points = " ".join(
        f"{pad + i * step:.1f},{height - pad - (height - 2 * pad) * share:.1f}"
        for i, (_, _, share) in enumerate(daily)
    )
    recent = ", ".join(f"{d.isoformat()}: {round(s * 100)}%" for d, _, s in daily[-7:])
    return Chart(
        width=width,
        height=height,
        pad=pad,
        peak=100,
        bars=[],
        first=_short(daily[0][0]),
        last=_short(daily[-1][0]),
        description=f"Share of events {what} per day; last days {recent}",
        points=points,
    )


# -- match quality -----------------------------------------------------------------------

# -- settings ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Field:
    key: str
    label: str
    help: str
    choices: tuple[tuple[str, str], ...] = ()
    default: str = ""
    #: a free-text field (no choices)
    text: bool = False


VALUE_FIELD: Final = Field(
    key="value_basis",
    label="Purchase value sent to Meta",
    help="What Meta optimises your ads on. The order total is what the shopper paid, tax and "
    "shipping included; many stores send the amount without tax and shipping.",
    choices=(
        ("total", "Order total"),
        ("excl_tax", "Without tax"),
        ("excl_shipping", "Without shipping"),
        ("excl_tax_and_shipping", "Without tax and shipping"),
    ),
    default="total",
)

_FIELDS: Final[Mapping[str, tuple[Field, ...]]] = {
    "shopify": (
        Field(
            key="purchase_on",
            label="Count a purchase",
            help="When an order that is not paid yet (bank transfer, cash on delivery) counts.",
            choices=(
                ("paid", "When it is paid"),
                ("created", "When the order is placed"),
            ),
            default="paid",
        ),
        Field(
            key="content_id",
            label="Product ids sent to Meta",
            help="Match the ids of your Meta catalog, so ads can show the products bought.",
            choices=(
                ("variant", "Variant id"),
                ("product", "Product id"),
                ("sku", "SKU"),
                ("catalog", "Shopify's Facebook channel ids"),
            ),
            default="variant",
        ),
        Field(
            key="catalog_country",
            label="Catalog country (for Facebook channel ids)",
            help="Two letters, e.g. US; only used with Shopify's Facebook channel ids.",
            text=True,
        ),
        VALUE_FIELD,
    ),
    "woocommerce": (
        Field(
            key="on_hold_is_paid",
            label="Count a purchase",
            help="Stores whose offline payment methods mark paid orders as on hold can count them.",
            choices=(
                ("false", "When it is processing or completed"),
                ("true", "Also when on hold"),
            ),
            default="false",
        ),
        Field(
            key="content_id",
            label="Product ids sent to Meta",
            help="Match the ids of your Meta catalog, so ads can show the products bought.",
            choices=(
                ("id", "Product or variation id"),
                ("product", "Parent product id"),
                ("sku", "SKU"),
                ("facebook_retailer_id", "Facebook for WooCommerce ids"),
            ),
            default="id",
        ),
        VALUE_FIELD,
    ),
}


def settings_fields(platform: str) -> tuple[Field, ...]:
    """The settings a store owner may change on this platform's connections."""
    return _FIELDS.get(platform, (VALUE_FIELD,))


def field_values(
    fields: Sequence[Field], settings: Mapping[str, Any]
) -> list[tuple[Field, str]]:
    """Each field with the value the connection has now (its default when unset)."""
    rv = []
    for f in fields:
        v = settings.get(f.key)
        rv.append(
            (
                f,
                f.default
                if v is None
                else json.dumps(v)
                if isinstance(v, bool)
                else str(v),
            )
        )
    return rv


def apply_settings_form(
    fields: Sequence[Field], current: Mapping[str, Any], form: Mapping[str, str]
) -> dict[str, Any]:
    """The settings after the form: chosen values set, defaults and empty texts removed."""
    new = dict(current)
    for f in fields:
        raw = (form.get(f.key) or "").strip()
        if f.key == "content_id":
            new.pop("content_id_format", None)  # the older name of the same setting
        if not raw or (raw == f.default and not f.text):
            new.pop(f.key, None)
        elif raw in ("true", "false") and {c for c, _ in f.choices} == {
            "true",
            "false",
        }:
            new[f.key] = raw == "true"
        else:
            new[f.key] = raw.upper() if f.key == "catalog_country" else raw
    return new


def plain_problem(problem: str) -> str:
    """A settings problem from the platform, with the setting's key replaced by its label."""
    for fields in _FIELDS.values():
        for f in fields:
            problem = problem.replace(f.key, f.label)
    return problem[:1].upper() + problem[1:]


def done_message(args: Mapping[str, str]) -> str | None:
    """The sentence confirming what the last form did (its redirect says what)."""
    done = args.get("done")
    n = _count(args.get("n"))
    old = _count(args.get("old"))
    if done == "replayed":
        text = f"{n} event{'s' if n != 1 else ''} will be sent again within a minute."
        if old:
            text += (
                f" {old} older than 7 days stay as they are: Meta would refuse them."
            )
        if args.get("more") == "1":
            text += " More remain: replay again to send the rest."
        return text
    return {
        "live": "You are live: events from now on count for your ads.",
        "test": "Test mode is on: new events go to Meta's Test events tab only.",
        "saved": "Settings saved. They apply to events from now on.",
    }.get(done or "")


def _count(raw: str | None) -> int:
    return int(raw) if raw and raw.isascii() and raw.isdigit() and len(raw) < 9 else 0


# -- pixel setup -------------------------------------------------------------------------

PIXEL_BASE: Final = (
    "!function(f,b,e,v,n,t,s){if(f.fbq)return;n=f.fbq=function(){n.callMethod?"
    "n.callMethod.apply(n,arguments):n.queue.push(arguments)};if(!f._fbq)f._fbq=n;"
    "n.push=n;n.loaded=!0;n.version='2.0';n.queue=[];t=b.createElement(e);t.async=!0;"
    "t.src=v;s=b.getElementsByTagName(e)[0];s.parentNode.insertBefore(t,s)}"
    "(window,document,'script','https://connect.facebook.net/en_US/fbevents.js');"
)


@dataclass(frozen=True, kw_only=True)
class Snippet:
    platform: str
    pixel_id: str | None
    code: str
    filename: str | None
    steps: list[str]


def pixel_snippet(conn: Connection) -> Snippet:
    """The browser pixel code for this store, filled in with its pixel id."""
    pixel = conn.pixel_id if conn.pixel_id and conn.pixel_id.isdigit() else None
    pid = pixel or "YOUR_PIXEL_ID"
    if conn.platform == "woocommerce":
        return Snippet(
            platform="woocommerce",
            pixel_id=pixel,
            code=woocommerce_plugin(pid),
            filename="meta-pixel-dedup.php",
            steps=[
                "Skip this if you use the Facebook for WooCommerce plugin: it already sends the browser events with the ids the connector uses.",
                "Save the code below as meta-pixel-dedup.php.",
                "Upload it to wp-content/plugins/ on your site (or zip it and use Plugins → Add New → Upload).",
                "Activate “Meta pixel purchase (deduplicated)” in Plugins.",
            ],
        )
    return Snippet(
        platform="shopify",
        pixel_id=pixel,
        code=shopify_custom_pixel(pid),
        filename=None,
        steps=[
            "In your Shopify admin, open Settings → Customer events.",
            "Click Add custom pixel, name it “Meta pixel (deduplicated)”.",
            "Paste the code below, then Save and Connect.",
            "Remove other Meta pixel code from your theme so purchases are not counted twice.",
        ],
    )


def shopify_custom_pixel(pixel_id: str) -> str:
    """A Shopify custom pixel sending InitiateCheckout and Purchase with our event ids.

    ``eventID`` is the checkout token for InitiateCheckout and the order id for Purchase,
    the ``event_id`` our server events carry, so Meta keeps one of each
    (https://developers.facebook.com/docs/marketing-api/conversions-api/deduplicate-pixel-and-server-events,
    https://shopify.dev/docs/api/web-pixels-api/standard-events/checkout_completed).
    """
    return f"""// Meta pixel for Shopify Customer events, deduplicated with the Conversions API connector.
{PIXEL_BASE}
fbq('init', '{pixel_id}');

// Order ids may come as gid://shopify/OrderIdentity/123; Meta must see the same 123 the server sends.
function metaOrderId(id) {{
  return String(id).split('/').pop();
}}

function metaMoney(checkout) {{
  var total = checkout.totalPrice || {{}};
  return {{ value: Number(total.amount || 0), currency: total.currencyCode }};
}}

function metaContents(checkout) {{
  return (checkout.lineItems || []).map(function (line) {{
    var variant = line.variant || {{}};
    return {{ id: String(variant.id || '').split('/').pop(), quantity: line.quantity }};
  }});
}}

analytics.subscribe('checkout_started', function (event) {{
  var checkout = event.data.checkout;
  var data = metaMoney(checkout);
  data.contents = metaContents(checkout);
  data.content_type = 'product';
  fbq('track', 'InitiateCheckout', data, {{ eventID: checkout.token }});
}});

analytics.subscribe('checkout_completed', function (event) {{
  var checkout = event.data.checkout;
  if (!checkout.order || !checkout.order.id) return;
  var data = metaMoney(checkout);
  data.contents = metaContents(checkout);
  data.content_type = 'product';
  fbq('track', 'Purchase', data, {{ eventID: metaOrderId(checkout.order.id) }});
}});
"""


def woocommerce_plugin(pixel_id: str) -> str:
    """A WordPress plugin sending Purchase on the order-received page with our event id.

    The id is the order's ``_meta_event_id`` when the store records one, else the order id:
    what the connector's WooCommerce translation sends as ``event_id``.
    """
    return f"""<?php
/**
 * Plugin Name: Meta pixel purchase (deduplicated)
 * Description: Sends the Meta pixel's Purchase on the order-received page with the event ID the Conversions API connector sends, so Meta counts each order once.
 * Version: 1.0.0
 * Requires PHP: 7.4
 */

if ( ! defined( 'ABSPATH' ) ) {{
	exit;
}}

const META_DEDUP_PIXEL_ID = '{pixel_id}';

add_action(
	'woocommerce_thankyou',
	function ( $order_id ) {{
		$order = wc_get_order( $order_id );
		if ( ! $order ) {{
			return;
		}}
		// The connector sends _meta_event_id when the order has one, else the order id.
		$event_id = (string) $order->get_meta( '_meta_event_id' );
		if ( '' === $event_id ) {{
			$event_id = (string) $order->get_id();
		}}
		$contents = array();
		foreach ( $order->get_items() as $item ) {{
			$id         = $item->get_variation_id() ? $item->get_variation_id() : $item->get_product_id();
			$contents[] = array(
				'id'       => (string) $id,
				'quantity' => (int) $item->get_quantity(),
			);
		}}
		$data = array(
			'value'        => (float) $order->get_total(),
			'currency'     => $order->get_currency(),
			'contents'     => $contents,
			'content_type' => 'product',
		);
		?>
<script>
{PIXEL_BASE}
fbq('init', <?php echo wp_json_encode( META_DEDUP_PIXEL_ID ); ?>);
fbq('track', 'Purchase', <?php echo wp_json_encode( $data ); ?>, <?php echo wp_json_encode( array( 'eventID' => $event_id ) ); ?>);
</script>
		<?php
	}}
);
"""


# -- the order sweep, webhook repairs, too-old events, retention -------------------------


def sweep_text(summary: SweepSummary | None) -> str:
    """The last order sweep in a store owner's words: what it checked and what it recovered."""
    if summary is None or summary.last_run_at is None:
        return (
            "The connector has not checked the store's recent orders yet; it does so "
            "regularly, to send any order whose notification never arrived."
        )
    if summary.failed:
        return (
            "The last check of your store's recent orders could not reach the store. "
            "It is tried again at the next check; nothing already received is affected."
        )
    c = summary.counts
    scanned, enqueued, present = (
        _n(c.get(k)) for k in ("scanned", "enqueued", "present")
    )
    skipped = c.get("skipped")
    skipped_n = (
        sum(_n(v) for v in skipped.values()) if isinstance(skipped, Mapping) else 0
    )
    text = f"Checked {scanned} recent order{_s(scanned)}. "
    if enqueued:
        text += (
            f"{enqueued} had no notification from the store and {_was(enqueued)} "
            "recovered: their events are on their way to Meta."
        )
    else:
        text += "None were missing: every order had already reached the connector."
    if present and enqueued:
        text += f" {present} had already arrived."
    if skipped_n:
        text += f" {skipped_n} {_was(skipped_n)} not sent (not a purchase yet, too old for Meta, or not readable)."
    return text


_TOPIC_WORDS: Final = {
    "orders": "orders",
    "order": "orders",
    "checkouts": "checkouts",
    "app": "the app",
}

_REPAIR_WORDS: Final = {
    "reactivated": "Switched back on",
    "recreated": "Set up again",
    "failed": "Could not repair",
}


def repair_text(topic: str, action: str) -> str:
    """One webhook repair as a sentence, e.g. ``Set up again: notifications of orders (paid)``."""
    head, _, tail = topic.replace(".", "/").partition("/")
    subject = _TOPIC_WORDS.get(head, "the store")
    what = tail.replace("_", " ") if tail else ""
    return f"{_REPAIR_WORDS.get(action, 'Checked')}: the notification of {subject}" + (
        f" ({what})" if what else ""
    )


def too_old_text(n: int) -> str | None:
    """Events never delivered because they were past Meta's 7-day window, or None for none."""
    if not n:
        return None
    return (
        f"{n} order event{_s(n)} could not be sent because {'they were' if n != 1 else 'it was'} "
        "more than 7 days old by the time the connector could send "
        f"{'them' if n != 1 else 'it'}: Meta only accepts conversions from the last 7 days."
    )


def retention_text(personal_data_days: int) -> str:
    """How long customers' details are kept, in one line."""
    return (
        f"Customer details (email, phone, address, IP address) are kept for "
        f"{personal_data_days} day{_s(personal_data_days)} after Meta receives an event, then "
        "deleted; order numbers and totals stay for your records."
    )


def _n(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _was(n: int) -> str:
    return "was" if n == 1 else "were"


# -- Meta's own scores -------------------------------------------------------------------

#: Graph error codes of a read without access, as a store owner would be told
#: (https://developers.facebook.com/docs/graph-api/guides/error-handling)
_NO_ACCESS_WORDS: Final = (
    ((190,), "the Meta sign-in has expired or was withdrawn; reconnect Meta"),
    ((102,), "the Meta sign-in has expired; reconnect Meta"),
    (
        (10, *range(200, 300)),
        "the Meta account connected may not read this pixel's quality; reconnect Meta with "
        "an account that manages the pixel",
    ),
    (
        (100,),
        "the connected Meta account cannot see this pixel; check the pixel chosen",
    ),
)


@dataclass(frozen=True, kw_only=True)
class MetaCheck:
    """What the page says about Meta's quality read, and whether scores can be shown."""

    text: str
    tone: str = "ok"  # ok | warn
    asked: bool = False


def meta_check_text(
    *,
    outcome: str | None,
    detail: str | None,
    checked_at: datetime | None,
    same_pixel: bool,
) -> MetaCheck:
    """Meta's last Dataset Quality read in plain words: never asked, no access (why), failed."""
    if outcome is None or checked_at is None or not same_pixel:
        return MetaCheck(
            text="Meta has not been asked yet. The connector asks Meta once a day, once a "
            "pixel and a Meta account are connected."
        )
    when = checked_at.strftime("%Y-%m-%d %H:%M") + " UTC"
    if outcome == "no_access":
        code_match = re.match(r"Meta error (\d+)", detail or "")
        code = int(code_match.group(1)) if code_match else None
        reason = next(
            (words for codes, words in _NO_ACCESS_WORDS if code in codes),
            "Meta did not let the connected account read this pixel's quality; reconnect Meta",
        )
        return MetaCheck(text=f"No access: {reason}. (Asked on {when}.)", tone="warn")
    if outcome != "ok":
        return MetaCheck(
            text=f"Meta could not answer when asked on {when}; it is asked again the next day.",
            tone="warn",
        )
    return MetaCheck(text=f"From Meta, read on {when}.", asked=True)


DEDUP_KEY_NAMES: Final = {
    "event_id": "Event ID",
    "external_id": "Customer id",
    "fbp": "Browser id (fbp)",
}


def dedup_rows(
    dedupe: Mapping[str, Mapping[str, float | None]],
) -> list[tuple[str, str, str, str]]:
    """Meta's dedup feedback as rows: (key, browser events with it, server events, deduplicated).

    Percentages as Meta gave them ("not given" when absent); ``event_id`` first
    (https://developers.facebook.com/docs/marketing-api/conversions-api/dataset-quality-api).
    """

    def pct(v: float | None) -> str:
        return "not given" if v is None else f"{v:g}%"

    return [
        (
            DEDUP_KEY_NAMES.get(key, key.replace("_", " ")),
            pct(fb.get("browser")),
            pct(fb.get("server")),
            pct(fb.get("overall")),
        )
        for key, fb in sorted(
            dedupe.items(), key=lambda kv: (kv[0] != "event_id", kv[0])
        )
    ]


_KEY_PHRASE: Final = re.compile(r"\((\d+)% of events lack (\w+)\)$")


def plain_improvement(tip: str) -> str:
    """An improvement from the match-quality rules with its key code named in words."""
    return _KEY_PHRASE.sub(
        lambda m: (
            f"({m.group(1)}% of events have no {KEY_NAMES.get(m.group(2), m.group(2)).lower()})"
        ),
        tip,
    )


def plain_warning(message: str) -> str:
    """A dedup warning without command-line hints (the page links the event list instead)."""
    return re.sub(r"\s*\(see `[^`]*`\)", " (see Events)", message)


def email_chart(daily: Sequence[Coverage]) -> Chart | None:
    """A line of the daily share of sent events carrying an email, from the daily aggregates."""
    return coverage_chart(
        [
            (date.fromisoformat(c.day), c.events_sent, c.share("em"))
            for c in daily
            if c.events_sent
        ],
        what="with an email address",
    )


@dataclass(frozen=True, kw_only=True)
class CoverageView:
    event_name: str
    events_sent: int
    estimate: float  # our estimate, 0-10
    estimate_word: str
    shares: list[tuple[str, str, int]]  # (key, name, percent)
    chart: Chart | None
    meta: MetaEventView | None
    dedup: list[tuple[str, str, str, str]]


def coverage_views(
    totals: Sequence[Coverage],
    daily: Sequence[Coverage],
    meta: Sequence[MetaEventView],
) -> list[CoverageView]:
    """Per event name: our coverage and estimate over the period, the chart, Meta's answer.

    Names Meta scored that we sent none of in the period still appear, with Meta's part only.
    """
    by_meta = {m.event_name: m for m in meta}
    names = [c.event_name for c in totals] + sorted(
        n for n in by_meta if n not in {c.event_name for c in totals}
    )
    by_total = {c.event_name: c for c in totals}
    rv = []
    for name in names:
        c = by_total.get(name)
        m = by_meta.get(name)
        rv.append(
            CoverageView(
                event_name=name,
                events_sent=c.events_sent if c else 0,
                estimate=c.average_estimate if c else 0.0,
                estimate_word=estimate_label(c.average_estimate) if c else "",
                shares=[(k, KEY_NAMES[k], round(100 * c.share(k))) for k in MATCH_KEYS]
                if c
                else [],
                chart=email_chart([d for d in daily if d.event_name == name]),
                meta=m,
                dedup=dedup_rows(m.dedupe) if m else [],
            )
        )
    return rv
