"""Without ADMIN_PASSWORD, /admin (and the operator's pages behind it) open only to a
developer's own machine: not through a tunnel or proxy, whose requests all come from 127.0.0.1
(ngrok, cloudflared), and not when APP_URL names another host."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from connector.runtime import Runtime
from connector.web import create_app

LOCAL_APP_URLS = [
    "http://localhost:8000",
    "http://127.0.0.1:8000",
    "http://[::1]:8000",
]


def _client(runtime: Runtime, app_url: str, **overrides: Any) -> Any:
    settings = dataclasses.replace(runtime.settings, app_url=app_url, **overrides)
    return create_app(
        runtime=dataclasses.replace(runtime, settings=settings)
    ).test_client()


def _admin(
    client: Any, *, ip: str = "127.0.0.1", host: str = "localhost:8000", **headers: str
) -> Any:
    return client.get(
        "/admin",
        headers={"Host": host, **headers},
        environ_base={"REMOTE_ADDR": ip},
    )


@pytest.mark.parametrize("app_url", LOCAL_APP_URLS)
@pytest.mark.parametrize(
    ("ip", "host"),
    [
        ("127.0.0.1", "localhost:8000"),
        ("127.0.0.1", "127.0.0.1:8000"),
        ("::1", "[::1]:8000"),
        ("127.0.0.1", "LOCALHOST"),
    ],
)
def test_a_developers_own_browser_gets_in(
    runtime: Runtime, app_url: str, ip: str, host: str
) -> None:
    assert 200 == _admin(_client(runtime, app_url), ip=ip, host=host).status_code


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"X-Forwarded-For": "127.0.0.1"},
        {"Forwarded": "for=203.0.113.9;proto=https"},
        {"X-Real-IP": "203.0.113.9"},
        {"X-Forwarded-Host": "abc.ngrok-free.app"},
        {"X-Forwarded-Proto": "https"},
        {"CF-Connecting-IP": "203.0.113.9"},
    ],
    ids=lambda h: next(iter(h)),
)
def test_a_forwarded_request_is_refused(
    runtime: Runtime, headers: dict[str, str]
) -> None:
    assert (
        404 == _admin(_client(runtime, "http://localhost:8000"), **headers).status_code
    )


@pytest.mark.parametrize(
    "host",
    [
        "abc.ngrok-free.app",
        "connector.example:8000",
        "localhost.evil.example",
        "10.0.0.2",
    ],
)
def test_a_host_that_is_not_this_machine_is_refused(
    runtime: Runtime, host: str
) -> None:
    assert (
        404 == _admin(_client(runtime, "http://localhost:8000"), host=host).status_code
    )


@pytest.mark.parametrize(
    "app_url",
    [
        "https://abc.ngrok-free.app",
        "https://connector.example",
        "http://192.168.1.4:8000",
    ],
)
def test_an_app_url_elsewhere_closes_local_access(
    runtime: Runtime, app_url: str
) -> None:
    assert 404 == _admin(_client(runtime, app_url)).status_code


def test_another_address_is_refused(runtime: Runtime) -> None:
    assert (
        404
        == _admin(
            _client(runtime, "http://localhost:8000"), ip="203.0.113.5"
        ).status_code
    )


def test_a_tunnel_with_a_password_works(runtime: Runtime) -> None:
    client = _client(runtime, "https://abc.ngrok-free.app", admin_password="pw-local")
    rv = client.get(
        "/admin",
        headers={"Host": "abc.ngrok-free.app", "X-Forwarded-For": "203.0.113.9"},
        auth=("admin", "pw-local"),
    )
    assert 200 == rv.status_code
