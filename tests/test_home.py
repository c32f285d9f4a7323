"""GET / answers a short page pointing to the operator's page and the health check."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from connector.config import Settings


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def test_home_links_to_admin_and_health(client: Any) -> None:
    rv = client.get("/")
    assert 200 == rv.status_code
    assert "text/html" == rv.mimetype
    parser = Links()
    parser.feed(rv.get_data(as_text=True))
    assert {"/admin", "/healthz"} == set(parser.hrefs)
    assert "DENY" == rv.headers["X-Frame-Options"]
    for (
        href
    ) in parser.hrefs:  # each link leads somewhere real (the admin page is closed here)
        assert client.get(href).status_code in {200, 401, 404}
    assert 200 == client.get("/healthz").status_code


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_home_tells_nothing_of_the_deployment(
    client: Any, settings: Settings, method: str
) -> None:
    body = client.open("/", method=method).get_data(as_text=True)
    for secret in (settings.secret_key, *settings.encryption_keys, settings.app_url):
        assert secret not in body
