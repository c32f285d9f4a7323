"""One exception hierarchy for the connector; each class knows its HTTP answer."""

from __future__ import annotations

from typing import ClassVar


class ConnectorError(Exception):
    """Something went wrong in the connector."""

    http_status: ClassVar[int] = 500

    def __init__(self, message: str | None = None) -> None:
        # Like procrastinate: without a message, the class docstring explains.
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def detail(self) -> str:
        return str(self)


class ConfigError(ConnectorError):
    """The configuration is not usable; the connector refuses to start.

    Raised while serving a request, it means a feature whose credentials are not set (the
    Shopify app on a WooCommerce-only deployment, say): for the outside world that route is
    not here, a 404, and nothing for the error log.
    """

    http_status = 404

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class SignatureError(ConnectorError):
    """The request's signature is missing or does not match."""

    http_status = 401


class UnknownConnectionError(ConnectorError):
    """The request names no connection this connector knows."""

    http_status = 401


class PayloadError(ConnectorError):
    """The request body is not what the platform sends."""

    http_status = 400


class NotFoundError(ConnectorError):
    """No such resource."""

    http_status = 404


class OAuthStateError(ConnectorError):
    """The sign-in link is forged, used already, expired or meant for another store."""

    http_status = 400


class CryptoError(ConnectorError):
    """A stored secret cannot be decrypted with the configured keys."""


class GraphError(ConnectorError):
    """Meta's Graph API refused or failed a request."""

    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        type: str | None = None,
        is_transient: bool = False,
        fbtrace_id: str | None = None,
        http_status: int | None = None,
        may_have_reached: bool = True,
    ) -> None:
        super().__init__(message)
        #: False only when the request never left (no connection): not a possible send
        self.may_have_reached = may_have_reached
        self.code = code
        self.subcode = subcode
        self.type = type
        self.is_transient = is_transient
        self.fbtrace_id = fbtrace_id
        self.status = http_status


class PlatformError(ConnectorError):
    """A store platform's API (Shopify Admin, WooCommerce REST) failed a request."""

    http_status = 502

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
