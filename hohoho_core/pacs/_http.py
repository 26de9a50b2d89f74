"""One DICOMweb client per server, and every failure of a call turned into a `PacsError`.

dicomweb-client raises what ``requests``, its multipart decoder and pydicom raise: a
refused connection, a timeout, an HTTP status, undecodable JSON or multipart, a part
that is not DICOM. `calling` turns each into one sentence that names the server (by its
display URL) and what happened, and never quotes the exception's own text, which may
hold the request's URL, headers or the server's bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import requests
from dicomweb_client import DICOMwebClient

from hohoho_core.pacs.server import DicomwebServer, PacsError

__all__ = ["calling", "make_client"]

#: Retries of a busy server (429, 503, ...): a few quick ones, so a down server is
#: reported within seconds rather than after dicomweb-client's five exponential waits.
_MAX_ATTEMPTS = 2
_RETRY_WAIT_MS = 250


#: Left unescaped in query values: the QIDO-RS wildcards and the person-name separator.
#: RFC 3986 allows ``*`` in a query; Orthanc 1.10 matches ``%2A`` and ``%5E`` literally.
_QUERY_SAFE = "*^-.,_"


class _Client(DICOMwebClient):
    """dicomweb-client with QIDO-RS query values escaped as servers expect them."""

    def _http_get(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> Any:
        if params:
            parts = []
            for key, value in params.items():
                values = value if isinstance(value, list | tuple | set) else [value]
                parts.extend(f"{key}={quote(str(v), safe=_QUERY_SAFE)}" for v in values)
            url = f"{url}?{'&'.join(parts)}"
        return super()._http_get(url, None, headers, stream)


def make_client(server: DicomwebServer) -> DICOMwebClient:
    """A dicomweb-client bound to ``server``; credentials go on the session only.

    The session, not the per-request headers, carries them: dicomweb-client logs the
    per-request headers at DEBUG level.
    """
    session = requests.Session()
    session.trust_env = False  # no ~/.netrc or proxy variables changing who we sign in as
    if server.user and server.password is not None:
        session.auth = (server.user, server.password)
    elif server.token:
        session.headers["Authorization"] = f"Bearer {server.token}"
    client = _Client(url=server.url, session=session, timeout=server.timeout_s)
    client.set_http_retry_params(
        retry=True, max_attempts=_MAX_ATTEMPTS, wait_exponential_multiplier=_RETRY_WAIT_MS
    )
    return client


def _http_message(server: DicomwebServer, what: str, status: int) -> str:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "unknown status"
    where = f"DICOMweb server {server.display_url}"
    if status in (401, 403):
        signed = {"basic": "the user name and password", "bearer": "the token",
                  "none": "no credentials"}[server.auth_kind]
        return (f"{where} refused {what} with {signed} (HTTP {status} {reason}): check "
                "HOHOHO_DICOMWEB_USER/PASSWORD or HOHOHO_DICOMWEB_TOKEN")
    if status == 404:
        return (f"{where} has nothing at the address of {what} (HTTP 404 Not Found): is "
                "the URL the DICOMweb root, e.g. http://host:8042/dicom-web?")
    return f"{where} failed {what} (HTTP {status} {reason})"


@contextlib.contextmanager
def calling(server: DicomwebServer, what: str) -> Iterator[None]:
    """Run one exchange with ``server``; any failure leaves as a `PacsError`.

    ``what`` names the exchange in the message ("the study search", ...).
    """
    where = f"DICOMweb server {server.display_url}"
    try:
        yield
    except PacsError:
        raise
    except requests.exceptions.JSONDecodeError:
        raise PacsError(
            f"{where} answered {what} with something that is not valid DICOMweb "
            "(not JSON)"
        ) from None
    except requests.exceptions.HTTPError as err:
        status = err.response.status_code if err.response is not None else 0
        raise PacsError(_http_message(server, what, status)) from None
    except requests.exceptions.ConnectTimeout:
        raise PacsError(
            f"{where} did not accept a connection within {server.timeout_s:g} s ({what})"
        ) from None
    except requests.exceptions.Timeout:
        raise PacsError(
            f"{where} stopped answering for more than {server.timeout_s:g} s during {what}"
        ) from None
    except requests.exceptions.SSLError:
        raise PacsError(f"{where}: the TLS handshake failed ({what})") from None
    except requests.exceptions.ConnectionError:
        raise PacsError(
            f"cannot reach {where} ({what}): the connection was refused or dropped; is the "
            "server running and the URL right?"
        ) from None
    except requests.exceptions.RequestException as err:
        raise PacsError(f"{where}: the request failed ({type(err).__name__}, {what})") from None
    except MemoryError:
        raise PacsError(f"{where} sent more than this machine can hold ({what})") from None
    except Exception as err:  # JSON, multipart or DICOM decoding of what the server sent
        raise PacsError(
            f"{where} answered {what} with something that is not valid DICOMweb "
            f"({type(err).__name__})"
        ) from None
