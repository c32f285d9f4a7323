"""The soak of bench/soak.py, scaled down for CI: 4 workers, 10 stores, 1,000 events.

The full size (100 stores, 20,000 events, Meta answering in 0.3-2 s) runs by hand:
``.venv/bin/python bench/soak.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _soak_module() -> object:
    spec = importlib.util.spec_from_file_location(
        "bench_soak", ROOT / "bench" / "soak.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_soak_sends_each_healthy_event_exactly_once(database_url: str) -> None:
    """Slow faulty Meta, a broken store, a disconnect and a 5 s database cut lose and double nothing."""
    if not database_url.startswith("postgresql"):
        pytest.skip("several worker processes and a database cut need PostgreSQL")
    import os

    soak = _soak_module()
    rv = soak.run_soak(  # type: ignore[attr-defined]
        os.environ["TEST_DATABASE_URL"],
        workers=4,
        stores=10,
        events=1_000,
        latency=(0.05, 0.4),
        cut_seconds=5.0,
        timeout=120.0,
        # small requests, so that the disconnect and the cut fall amid the sends
        batch_size=25,
        # rows of a batch cut off mid-way wait one lease: keep it short
        lease_seconds=20,
    )
    print(rv)
    assert rv["never_sent"] == 0
    assert rv["sent_more_than_once"] == 0
    assert rv["sent_exactly_once"] == rv["healthy_events"] == 900
    assert rv["broken_store_held_with_reason"] == rv["broken_store_events"] == 100
    assert rv["broken_store_reached_meta"] == 0
    assert rv["left_in_sending"] == 0
    assert rv["worker_exit_codes"] == [0, 0, 0, 0]
