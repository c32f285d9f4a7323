"""/metrics takes ADMIN_PASSWORD (and METRICS_TOKEN), so wrong guesses there count in the same
failed-login throttle as /admin: 429 with Retry-After while an address is throttled."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connector.config import Settings
from connector.runtime import Runtime
from connector.web import create_app
from connector.web.login_throttle import LoginThrottle

PASSWORD = "correct horse"
TOKEN = "metrics-token-1"
GUESSER = "203.0.113.7"
OTHER = "198.51.100.9"
PER_CLIENT = 5
WINDOW = 900.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def basic(password: str) -> dict[str, str]:
    raw = base64.b64encode(f"prometheus:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(make_settings: Callable[..., Settings], clock: Clock) -> Iterator[Any]:
    rt = Runtime.from_settings(
        make_settings(env="production", admin_password=PASSWORD, metrics_token=TOKEN)
    )
    throttle = LoginThrottle(
        per_client=PER_CLIENT, overall=50, window=WINDOW, clock=clock
    )
    yield create_app(runtime=rt, login_throttle=throttle).test_client()
    rt.close()


def get(client: Any, path: str, headers: dict[str, str], ip: str = GUESSER) -> Any:
    return client.get(path, headers=headers, environ_base={"REMOTE_ADDR": ip})


WRONG = [
    pytest.param(basic("guess"), id="wrong-basic-password"),
    pytest.param(bearer("guess"), id="wrong-bearer-token"),
]
RIGHT = [
    pytest.param(basic(PASSWORD), id="basic-password"),
    pytest.param(bearer(TOKEN), id="bearer-token"),
]


@pytest.mark.parametrize("wrong", WRONG)
@pytest.mark.parametrize("right", RIGHT)
def test_wrong_guesses_on_metrics_throttle_then_release(
    client: Any, clock: Clock, wrong: dict[str, str], right: dict[str, str]
) -> None:
    for _ in range(PER_CLIENT):
        assert 401 == get(client, "/metrics", wrong).status_code
    throttled = get(client, "/metrics", right)
    assert 429 == throttled.status_code
    assert int(throttled.headers["Retry-After"]) > 0
    assert "connector_" not in throttled.get_data(as_text=True)
    # another address is not held up by this one's guesses
    assert 200 == get(client, "/metrics", right, ip=OTHER).status_code
    clock.now += WINDOW + 1
    assert 200 == get(client, "/metrics", right).status_code


@pytest.mark.parametrize("wrong", WRONG)
def test_guesses_on_metrics_throttle_admin(client: Any, wrong: dict[str, str]) -> None:
    for _ in range(PER_CLIENT):
        get(client, "/metrics", wrong)
    rv = get(client, "/admin", basic(PASSWORD))
    assert 429 == rv.status_code
    assert "Retry-After" in rv.headers


def test_an_address_admin_throttles_gets_no_metrics(client: Any) -> None:
    for _ in range(PER_CLIENT):
        assert 401 == get(client, "/admin", basic("guess")).status_code
    assert 429 == get(client, "/admin", basic(PASSWORD)).status_code
    for right in (basic(PASSWORD), bearer(TOKEN)):
        rv = get(client, "/metrics", right)
        assert 429 == rv.status_code
        assert "Retry-After" in rv.headers


def test_a_request_without_credentials_is_not_a_guess(client: Any) -> None:
    for _ in range(PER_CLIENT * 2):
        assert 401 == get(client, "/metrics", {}).status_code
    assert 200 == get(client, "/metrics", basic(PASSWORD)).status_code


def test_a_success_forgets_the_address_failures(client: Any) -> None:
    for _ in range(PER_CLIENT - 1):
        get(client, "/metrics", basic("guess"))
    assert 200 == get(client, "/metrics", bearer(TOKEN)).status_code
    for _ in range(PER_CLIENT - 1):
        assert 401 == get(client, "/metrics", basic("guess")).status_code
    assert 200 == get(client, "/metrics", basic(PASSWORD)).status_code
