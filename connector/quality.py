"""Match quality, decided (pure): which keys an event carried, our strength estimate, and what
Meta's Dataset Quality API says about a pixel.

Three things live here, none of them doing I/O:

* the **key mask**: the match keys one outbox event carried, as an integer whose bit ``i`` is
  set when :data:`MATCH_KEYS`\\ ``[i]`` was present (stored in ``events.match_keys``);
* **our estimate** of an event's match strength, 0-10, from the keys alone (see
  :func:`estimate`). It is ours, not Meta's Event Match Quality, which also weighs how many
  events Meta actually matched;
* reading Meta's **Dataset Quality API** answer (:func:`parse_dataset_quality`) and the
  **dedup audit** that turns its deduplication-key feedback into warnings with what to change
  (:func:`dedup_warnings`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from connector.events import PURCHASE, UserData

#: The match keys we count, in bit order: bit ``i`` of a mask is ``MATCH_KEYS[i]``.
#: Never reorder; append only (stored masks keep their meaning).
MATCH_KEYS: Final = (
    "em",
    "ph",
    "fn",
    "ln",
    "ct",
    "st",
    "zp",
    "country",
    "db",
    "ge",
    "external_id",
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
)
_BIT: Final = {key: 1 << i for i, key in enumerate(MATCH_KEYS)}


def key_mask(user: UserData | Mapping[str, Any]) -> int:
    """The bitmask of the :data:`MATCH_KEYS` present in a ``UserData`` or a ``user_data`` dict."""
    data = user.to_meta() if isinstance(user, UserData) else user
    mask = 0
    for key, bit in _BIT.items():
        if data.get(key):
            mask |= bit
    return mask


def keys_in(mask: int) -> list[str]:
    """The keys a mask holds, in :data:`MATCH_KEYS` order."""
    return [key for key, bit in _BIT.items() if mask & bit]


def bit(key: str) -> int:
    """The mask bit of one key. Raises KeyError for a key we do not count."""
    return _BIT[key]


# -- our estimate ------------------------------------------------------------------------

#: Points per key group, out of 10. OUR ESTIMATE, not Meta's score. The order follows Meta's
#: own guidance on which customer information matters most for matching: the recommended
#: parameters of the Conversions API best practices (contact information such as email and
#: phone, external ID, the fbc click ID and fbp browser ID, and IP address with user agent;
#: a user agent counts toward matching only together with an IP address),
#: https://developers.facebook.com/docs/marketing-api/conversions-api/best-practices#req-rec-params ,
#: and the Dataset Quality API's per-key "additional conversions reported" figures, where a
#: valid email shows the largest increase,
#: https://developers.facebook.com/docs/marketing-api/conversions-api/dataset-quality-api .
#: The weights themselves are ours: a reading of that order, not a formula Meta publishes.
ESTIMATE_WEIGHTS: Final[tuple[tuple[str, tuple[str, ...], float], ...]] = (
    ("email", ("em",), 3.0),
    ("phone", ("ph",), 2.0),
    ("click id (fbc)", ("fbc",), 1.5),
    ("external id", ("external_id",), 1.0),
    ("browser id (fbp)", ("fbp",), 1.0),
    ("IP address + user agent", ("client_ip_address", "client_user_agent"), 1.0),
    # Names and address help only together: half a point once two or more are there.
    ("name and address", ("fn", "ln", "ct", "st", "zp", "country", "db", "ge"), 0.5),
)
_NAME_AND_ADDRESS_MIN: Final = 2


@cache  # at most 2**15 masks
def estimate(mask: int) -> float:
    """OUR ESTIMATE of an event's match strength, 0.0-10.0, from the keys it carried.

    Each group of :data:`ESTIMATE_WEIGHTS` adds its points when all its keys are present
    (the name-and-address group when at least two of its keys are). Not Meta's Event Match
    Quality: Meta also weighs the values' quality and how many events it matched.
    """
    keys = set(keys_in(mask))
    score = 0.0
    for label, group, points in ESTIMATE_WEIGHTS:
        if label == "name and address":
            if len(keys.intersection(group)) >= _NAME_AND_ADDRESS_MIN:
                score += points
        elif keys.issuperset(group):
            score += points
    return round(score, 1)


def estimate_label(score: float) -> str:
    """A word for our estimate: strong (>= 6), fair (>= 3), weak."""
    if score >= 6:
        return "strong"
    if score >= 3:
        return "fair"
    return "weak"


@dataclass(frozen=True, kw_only=True)
class Coverage:
    """One day's sent events of one name for one connection, and how many carried each key."""

    day: str  # ISO date, UTC
    event_name: str
    events_sent: int
    key_counts: Mapping[str, int]
    #: sum of our per-event estimates, in tenths of a point (integer, so sums stay exact)
    estimate_tenths: int

    def share(self, key: str) -> float:
        """The fraction (0-1) of the events that carried ``key``."""
        return (
            self.key_counts.get(key, 0) / self.events_sent if self.events_sent else 0.0
        )

    @property
    def average_estimate(self) -> float:
        """Our estimate, averaged over the events (0-10)."""
        return (
            round(self.estimate_tenths / 10 / self.events_sent, 1)
            if self.events_sent
            else 0.0
        )


def aggregate(masks: Iterable[int]) -> tuple[int, dict[str, int], int]:
    """``(events, {key: events carrying it}, sum of estimates in tenths)`` over some masks."""
    tally: dict[int, int] = {}
    for mask in masks:
        tally[mask] = tally.get(mask, 0) + 1
    return aggregate_tally(tally)


def aggregate_tally(tally: Mapping[int, int]) -> tuple[int, dict[str, int], int]:
    """:func:`aggregate` over ``{mask: how many events had it}`` (at most 2**15 masks)."""
    events = 0
    counts = dict.fromkeys(MATCH_KEYS, 0)
    tenths = 0
    for mask, n in tally.items():
        events += n
        for key, b in _BIT.items():
            if mask & b:
                counts[key] += n
        tenths += round(estimate(mask) * 10) * n
    return events, counts, tenths


#: What to tell a store owner to improve, per key we can count, best first. The actions name
#: what this connector can read; they are what moves the estimate the most.
_ADVICE: Final[dict[str, str]] = {
    "em": "Ask for an e-mail address at checkout (it is the strongest match key).",
    "ph": "Ask for a phone number at checkout, with the country of its address.",
    "fbc": "Keep the fbclid of ad clicks: record the _fbc cookie or the landing page on the order.",
    "external_id": "Let shoppers check out with an account, so the customer id is sent.",
    "fbp": "Record the _fbp cookie on the order (the Meta pixel sets it).",
    "client_ip_address": "Record the shopper's public IP address, not a proxy's (set the proxy's forwarded-for header).",
    "client_user_agent": "Record the shopper's browser user agent on the order.",
}


def improvements(coverage: Sequence[Coverage], *, limit: int = 3) -> list[str]:
    """The ``limit`` changes that would raise our estimate the most, given this coverage.

    Each key of :data:`ESTIMATE_WEIGHTS`' top groups is ranked by its points times the share
    of events that lacked it; keys every event carried are not listed.
    """
    sent = sum(c.events_sent for c in coverage)
    if not sent:
        return []
    points = {
        key: weight / len(group)
        for _, group, weight in ESTIMATE_WEIGHTS[:-1]
        for key in group
    }
    gains = []
    for key, per_key in points.items():
        carried = sum(c.key_counts.get(key, 0) for c in coverage)
        missing = 1 - carried / sent
        if missing > 0:
            gains.append((per_key * missing, key, missing))
    gains.sort(key=lambda g: (-g[0], MATCH_KEYS.index(g[1])))
    return [
        f"{_ADVICE[key]} ({round(missing * 100)}% of events lack {key})"
        for _, key, missing in gains[:limit]
    ]


# -- Meta's Dataset Quality API ----------------------------------------------------------

#: The fields we ask ``GET /{version}/dataset_quality`` for (Meta's Dataset Quality API,
#: https://developers.facebook.com/docs/marketing-api/conversions-api/dataset-quality-api ).
DATASET_QUALITY_FIELDS: Final = (
    "web{event_name,"
    "event_match_quality{composite_score,match_key_feedback{identifier,coverage{percentage}}},"
    "event_coverage{percentage,goal_percentage},"
    "dedupe_key_feedback{dedupe_key,browser_events_with_dedupe_key{percentage},"
    "server_events_with_dedupe_key{percentage},"
    "overall_browser_coverage_from_dedupe_key{percentage}}}"
)


@dataclass(frozen=True, kw_only=True)
class MetaEventQuality:
    """Meta's view of one event name of a pixel, as its Dataset Quality API answered."""

    event_name: str
    composite_score: float | None = None
    #: Meta's identifiers (``email``, ``ip_address``, ...) -> coverage percentage
    match_key_coverage: Mapping[str, float] = field(default_factory=dict)
    event_coverage: float | None = None
    #: dedupe key (``event_id``, ``external_id``, ``fbp``) -> browser / server / overall %
    dedupe: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)


def parse_dataset_quality(body: Mapping[str, Any]) -> list[MetaEventQuality]:
    """Meta's ``{"web": [...]}`` answer, one item per event name; odd items are skipped."""
    rv: list[MetaEventQuality] = []
    web = body.get("web")
    for item in web if isinstance(web, list) else ():
        if not isinstance(item, Mapping) or not isinstance(item.get("event_name"), str):
            continue
        emq = _mapping(item.get("event_match_quality"))
        keys: dict[str, float] = {}
        for fb in _list(emq.get("match_key_feedback")):
            fb = _mapping(fb)
            pct = _pct(_mapping(fb.get("coverage")).get("percentage"))
            if isinstance(fb.get("identifier"), str) and pct is not None:
                keys[fb["identifier"]] = pct
        dedupe: dict[str, dict[str, float | None]] = {}
        # Meta's reference spells the field dedup_key_feedback, its examples dedupe_.
        feedback = item.get("dedupe_key_feedback", item.get("dedup_key_feedback"))
        for fb in _list(feedback):
            fb = _mapping(fb)
            key = fb.get("dedupe_key")
            if isinstance(key, str):
                dedupe[key] = {
                    "browser": _pct(
                        _mapping(fb.get("browser_events_with_dedupe_key")).get(
                            "percentage"
                        )
                    ),
                    "server": _pct(
                        _mapping(fb.get("server_events_with_dedupe_key")).get(
                            "percentage"
                        )
                    ),
                    "overall": _pct(
                        _mapping(
                            fb.get("overall_browser_coverage_from_dedupe_key")
                        ).get("percentage")
                    ),
                }
        rv.append(
            MetaEventQuality(
                event_name=item["event_name"][:64],
                composite_score=_pct(emq.get("composite_score")),
                match_key_coverage=keys,
                event_coverage=_pct(
                    _mapping(item.get("event_coverage")).get("percentage")
                ),
                dedupe=dedupe,
                raw=dict(item),
            )
        )
    return rv


# -- dedup audit -------------------------------------------------------------------------

#: Below this share of browser events deduplicated through event_id, we warn.
DEDUP_MIN_OVERALL: Final = 50.0
#: Our server events always carry event_id; Meta counting fewer means another sender.
SERVER_EVENT_ID_MIN: Final = 95.0

_EVENT_ID_RULE: Final = {
    PURCHASE: "the order id (Shopify: the order's id; WooCommerce: its _meta_event_id when set, else the order id)",
    "InitiateCheckout": "the checkout token (Shopify) or wc_checkout_<draft order id> (WooCommerce)",
}


@dataclass(frozen=True, kw_only=True)
class DedupWarning:
    """A connection-level warning for a dashboard: what is wrong and what to change."""

    kind: str  # "dedup_event_id_missing" | "dedup_event_id_mismatch" | "other_server_sender"
    event_name: str
    message: str


def dedup_warnings(events: Sequence[MetaEventQuality]) -> list[DedupWarning]:
    """What Meta's deduplication feedback says is wrong, per event name, with the fix.

    Meta deduplicates a browser event against a server event with the same ``event_name``
    and ``event_id`` (https://developers.facebook.com/docs/marketing-api/conversions-api/deduplicate-pixel-and-server-events ).
    Three cases are raised:

    * browser events mostly lack ``event_id`` (the pixel sends no ``eventID``);
    * browser events carry one, yet few are deduplicated (the pixel's ``eventID`` differs
      from ours);
    * fewer server events carry ``event_id`` than ours all do: another integration also
      sends this event server-side, and Meta may count it twice.
    """
    rv: list[DedupWarning] = []
    for q in events:
        feedback = q.dedupe.get("event_id")
        if not feedback:
            continue
        browser, server, overall = (
            feedback.get("browser"),
            feedback.get("server"),
            feedback.get("overall"),
        )
        rule = _EVENT_ID_RULE.get(
            q.event_name,
            "the event_id this connector sends (see `connector events show`)",
        )
        if browser is not None and browser < DEDUP_MIN_OVERALL:
            rv.append(
                DedupWarning(
                    kind="dedup_event_id_missing",
                    event_name=q.event_name,
                    message=(
                        f"Only {browser:g}% of the pixel's {q.event_name} events carry an "
                        f"event ID, so Meta cannot deduplicate them against ours. Make the "
                        f"pixel send eventID = {rule}."
                    ),
                )
            )
        elif overall is not None and overall < DEDUP_MIN_OVERALL:
            rv.append(
                DedupWarning(
                    kind="dedup_event_id_mismatch",
                    event_name=q.event_name,
                    message=(
                        f"The pixel's {q.event_name} events carry an event ID, but only "
                        f"{overall:g}% are deduplicated against ours: the pixel sends a "
                        f"different ID. Make the pixel send eventID = {rule}."
                    ),
                )
            )
        if server is not None and server < SERVER_EVENT_ID_MIN:
            rv.append(
                DedupWarning(
                    kind="other_server_sender",
                    event_name=q.event_name,
                    message=(
                        f"Only {server:g}% of the server {q.event_name} events Meta received "
                        f"carry an event ID, and every one this connector sends does: another "
                        f"integration also sends {q.event_name} server-side. Turn off its "
                        f"Conversions API sending (or this connector's) so Meta does not count "
                        f"purchases twice."
                    ),
                )
            )
    return rv


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _pct(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# -- the terminal report -------------------------------------------------------------------

_KEY_LABELS: Final = {
    "em": "em (email)",
    "ph": "ph (phone)",
    "fn": "fn (first name)",
    "ln": "ln (last name)",
    "ct": "ct (city)",
    "st": "st (state)",
    "zp": "zp (postcode)",
    "country": "country",
    "db": "db (birth date)",
    "ge": "ge (gender)",
    "external_id": "external_id",
    "client_ip_address": "client_ip_address",
    "client_user_agent": "client_user_agent",
    "fbc": "fbc (click id)",
    "fbp": "fbp (browser id)",
}


def render_report(report: Mapping[str, Any]) -> str:
    """One connection's report (connector.store.quality.report) as a table for a terminal."""
    conn, period = report["connection"], report["period"]
    lines = [
        f"{conn['platform']} {conn['store']}  (connection {conn['id']}, pixel {conn['pixel_id'] or '-'})",
        f"Events sent to Meta, {period['since']} .. {period['until']} (UTC days)",
        "",
    ]
    events = list(report["events"])
    scores = {s["event_name"]: s for s in (report.get("meta") or {}).get("scores", [])}
    names = [e["event_name"] for e in events] + sorted(
        n for n in scores if n not in {e["event_name"] for e in events}
    )
    if not names:
        lines.append("No events were sent in this period.")
    else:
        by_name = {e["event_name"]: e for e in events}
        width = max(len(n) for n in names)
        width = max(width, 8)
        label_width = len("our estimate (0-10)*") + 2
        head = "match key".ljust(label_width) + "".join(
            n.rjust(width + 2) for n in names
        )
        lines += [head, "-" * len(head)]

        def row(label: str, cell: Any) -> str:
            return label.ljust(label_width) + "".join(
                str(cell(n)).rjust(width + 2) for n in names
            )

        lines.append(
            row(
                "events sent",
                lambda n: by_name[n]["events_sent"] if n in by_name else 0,
            )
        )
        for key in MATCH_KEYS:
            lines.append(
                row(
                    _KEY_LABELS[key],
                    lambda n, key=key: (
                        f"{round(by_name[n]['coverage'][key] * 100)}%"
                        if n in by_name
                        else "-"
                    ),
                )
            )
        lines.append("-" * len(head))
        lines.append(
            row(
                "our estimate (0-10)*",
                lambda n: f"{by_name[n]['our_estimate']:.1f}" if n in by_name else "-",
            )
        )
        lines.append(
            row(
                "Meta EMQ (0-10)",
                lambda n: (
                    "-"
                    if scores.get(n, {}).get("composite_score") is None
                    else f"{scores[n]['composite_score']:.1f}"
                ),
            )
        )
        lines.append(
            row(
                "Meta event coverage",
                lambda n: (
                    "-"
                    if scores.get(n, {}).get("event_coverage") is None
                    else f"{scores[n]['event_coverage']:g}%"
                ),
            )
        )
        lines.append("")
        lines.append(
            "* our estimate from the keys sent (email 3, phone 2, fbc 1.5, external_id 1,"
            " fbp 1, IP+user agent 1, name/address 0.5); not Meta's score."
        )
    meta = report.get("meta")
    if meta is None:
        lines.append("Meta's scores: not read yet (the worker reads them daily).")
    elif meta["outcome"] != "ok":
        lines.append(
            f"Meta's scores: {meta['outcome'].replace('_', ' ')} at {_when(meta['checked_at'])}: {meta['detail']}"
        )
    else:
        lines.append(f"Meta's scores: read at {_when(meta['checked_at'])}.")
    if report.get("warnings"):
        lines += ["", "Warnings:"]
        lines += [f"  ! {w['event_name']}: {w['message']}" for w in report["warnings"]]
    if report.get("improvements"):
        lines += ["", "To improve:"]
        lines += [f"  {i}. {tip}" for i, tip in enumerate(report["improvements"], 1)]
    return "\n".join(lines)


def _when(iso: str) -> str:
    """``2026-11-30T02:16:21.62+00:00`` as ``2026-11-30 02:16 UTC``."""
    return f"{iso[:10]} {iso[11:16]} UTC" if len(iso) >= 16 else iso
