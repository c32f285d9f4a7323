"""A local fake of Meta's Dataset Quality API, ``GET /{version}/dataset_quality``.

Built from Meta's published page
(https://developers.facebook.com/docs/marketing-api/conversions-api/dataset-quality-api ):
query parameters ``dataset_id`` (the pixel), ``access_token``, ``fields`` and optional
``agent_name``; the answer ``{"web": [{"event_name", "event_match_quality": {"composite_score",
"match_key_feedback": [{"identifier", "coverage": {"percentage"}}]}, "event_coverage":
{"percentage", "goal_percentage", "description"}, "dedupe_key_feedback": [{"dedupe_key",
"browser_events_with_dedupe_key": {...}, "server_events_with_dedupe_key": {...},
"overall_browser_coverage_from_dedupe_key": {...}}]}]}``; Graph's error shape for a token
without access to the pixel (code 100, subcode 33), a permission error (code 10) and an invalid
token (code 190). ``install`` adds the route to the fake Graph app (tests/fakes/graph.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request

from tests.fakes.graph import graph_error


def pct(value: float, description: str = "") -> dict[str, Any]:
    rv: dict[str, Any] = {"percentage": value}
    if description:
        rv["description"] = description
    return rv


def event_answer(
    event_name: str,
    *,
    score: float = 6.2,
    keys: dict[str, float] | None = None,
    coverage: float = 80.0,
    browser_event_id: float = 100.0,
    server_event_id: float = 100.0,
    overall_event_id: float = 90.0,
) -> dict[str, Any]:
    """One item of ``web``, in Meta's published shape."""
    keys = keys if keys is not None else {"email": 100.0, "ip_address": 99.9}
    return {
        "event_name": event_name,
        "event_match_quality": {
            "composite_score": score,
            "match_key_feedback": [
                {"identifier": k, "coverage": {"percentage": v}}
                for k, v in keys.items()
            ],
        },
        "event_coverage": {
            "percentage": coverage,
            "goal_percentage": 75,
            "description": "The percentage of events received from your Conversions API compared to unique browser events from the Meta Pixel.",
        },
        "dedupe_key_feedback": [
            {
                "dedupe_key": "event_id",
                "browser_events_with_dedupe_key": pct(
                    browser_event_id,
                    "The percentage of browser events that contain this dedupe key.",
                ),
                "server_events_with_dedupe_key": pct(
                    server_event_id,
                    "The percentage of server events that contain this dedupe key.",
                ),
                "overall_browser_coverage_from_dedupe_key": pct(
                    overall_event_id,
                    "The overall percentage of browser events that are deduped with Conversions API events using this key. This percentage is incremental for each dedupe key.",
                ),
            },
            {
                "dedupe_key": "fbp",
                "browser_events_with_dedupe_key": pct(0),
                "server_events_with_dedupe_key": pct(0),
                "overall_browser_coverage_from_dedupe_key": pct(0),
            },
        ],
    }


@dataclass
class DatasetQuality:
    """The fake's state: which token may read which pixel, and each pixel's answer."""

    #: token -> pixels it may read
    access: dict[str, set[str]] = field(default_factory=dict)
    #: pixel -> items of ``web``
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: tokens Meta no longer accepts at all (code 190)
    invalid_tokens: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []  # (pixel, fields)

    def calls_for(self, pixel_id: str) -> int:
        with self.lock:
            return sum(1 for p, _ in self.calls if p == pixel_id)


def install(app: Flask, state: DatasetQuality) -> None:
    """Add ``GET /<version>/dataset_quality`` to a fake Graph app."""

    @app.get("/<version>/dataset_quality")
    def dataset_quality(version: str) -> Response:
        pixel = request.args.get("dataset_id", "")
        token = request.args.get("access_token", "")
        fields = request.args.get("fields", "")
        with state.lock:
            state.calls.append((pixel, fields))
        if not token or token in state.invalid_tokens:
            return graph_error(
                400,
                "Error validating access token: The session has been invalidated.",
                code=190,
                subcode=460,
            )
        if not pixel.isdigit():
            return graph_error(
                400, "(#100) param dataset_id must be a valid ID", code=100
            )
        if token not in state.access:
            return graph_error(
                403,
                "(#10) Application does not have permission for this action",
                code=10,
                type="OAuthException",
            )
        if pixel not in state.access[token]:
            return graph_error(
                400,
                f"Unsupported get request. Object with ID '{pixel}' does not exist, cannot be loaded due to missing permissions, or does not support this operation.",
                type="GraphMethodException",
                code=100,
                subcode=33,
            )
        if not fields.startswith("web"):
            return graph_error(400, "(#100) The web field is required", code=100)
        return jsonify({"web": state.answers.get(pixel, [])})
