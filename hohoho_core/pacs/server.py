"""Which DICOMweb server to talk to, and how to sign in: read once, never shown.

The URL comes from ``HOHOHO_DICOMWEB_URL`` (or a caller), credentials from
``HOHOHO_DICOMWEB_USER`` / ``HOHOHO_DICOMWEB_PASSWORD`` (HTTP basic) or
``HOHOHO_DICOMWEB_TOKEN`` (bearer). Secrets live in fields excluded from ``repr`` and are
never part of `DicomwebServer.display_url`, the only form of the server that messages,
logs and the app show. A user name or password written into the URL itself
(``https://user:pw@host``) is moved out of it into the credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = [
    "PASSWORD_ENV",
    "TOKEN_ENV",
    "URL_ENV",
    "USER_ENV",
    "DicomwebServer",
    "PacsError",
    "server_from_env",
]

URL_ENV = "HOHOHO_DICOMWEB_URL"
USER_ENV = "HOHOHO_DICOMWEB_USER"
PASSWORD_ENV = "HOHOHO_DICOMWEB_PASSWORD"
TOKEN_ENV = "HOHOHO_DICOMWEB_TOKEN"
#: Seconds to wait for a connection and for each read from the server.
DEFAULT_TIMEOUT_S = 20.0


class PacsError(RuntimeError):
    """The server could not be used: one sentence naming the server and what happened.

    Messages never hold a credential, a patient identifier or a traceback's text.
    """


@dataclass(frozen=True)
class DicomwebServer:
    """One DICOMweb service root (QIDO-RS, WADO-RS and STOW-RS under the same URL).

    Attributes:
        url: the service root without credentials, e.g. ``http://pacs:8042/dicom-web``.
        user / password: HTTP basic credentials (both or neither).
        token: a bearer token (instead of basic credentials).
        timeout_s: connect and read timeout, seconds.
    """

    url: str
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        parts = urlsplit(self.url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError(
                f"DICOMweb URL {_without_secrets(self.url)!r} is not an http(s) URL "
                "(e.g. http://localhost:8042/dicom-web)"
            )
        user, password = self.user, self.password
        if parts.username is not None or parts.password is not None:
            user = user or unquote(parts.username or "")
            password = password or unquote(parts.password or "")
        if password and not user:
            raise PacsError("a DICOMweb password was given without a user name")
        if user and password is None:
            raise PacsError("a DICOMweb user name was given without a password")
        if user and self.token:
            raise PacsError("give either a DICOMweb user and password or a token, not both")
        if not self.timeout_s > 0:
            raise PacsError(f"the DICOMweb timeout must be positive, got {self.timeout_s}")
        object.__setattr__(self, "url", _without_secrets(self.url).rstrip("/"))
        object.__setattr__(self, "user", user or None)
        object.__setattr__(self, "password", password if user else None)

    @property
    def display_url(self) -> str:
        """The URL as messages show it (never with credentials)."""
        return self.url

    @property
    def auth_kind(self) -> str:
        """``"basic"``, ``"bearer"`` or ``"none"``: what may be said about the sign-in."""
        if self.user:
            return "basic"
        return "bearer" if self.token else "none"

    def secrets(self) -> tuple[str, ...]:
        """Every secret value (for tests and scrubbing), never for display."""
        return tuple(s for s in (self.password, self.token) if s)


def _without_secrets(url: str) -> str:
    """``url`` without its user-info part (``user:password@``)."""
    parts = urlsplit(url.strip())
    if parts.username is None and parts.password is None:
        return url.strip()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def server_from_env(
    env: Mapping[str, str] | None = None, url: str | None = None
) -> DicomwebServer | None:
    """The server named by ``url`` (else ``HOHOHO_DICOMWEB_URL``) with the environment's
    credentials; None when no URL is set.

    Raises:
        PacsError: the URL is not http(s), or the credentials contradict each other.
    """
    env = os.environ if env is None else env
    url = (url or env.get(URL_ENV, "")).strip()
    if not url:
        return None
    user = env.get(USER_ENV, "").strip() or None
    password = env.get(PASSWORD_ENV, "") or None
    token = env.get(TOKEN_ENV, "").strip() or None
    if password is not None and user is None:
        raise PacsError(f"{PASSWORD_ENV} is set but {USER_ENV} is not")
    if user is not None and password is None:
        raise PacsError(f"{USER_ENV} is set but {PASSWORD_ENV} is not")
    return DicomwebServer(url=url, user=user, password=password, token=token)
