from __future__ import annotations

def test_healthz(client):
    rv = client.get("/healthz")
    assert rv.status_code == 200
