"""A tiny local HTTP server that answers like a broken PACS, for the failure tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def junk_server(mode: str, token: str | None = None, hang_s: float = 3.0) -> Iterator[str]:
    """Yield the DICOMweb URL of a server that answers every GET and POST with:

    ``"garbage"``: 200 and bytes that are neither JSON nor multipart DICOM;
    ``"multipart-garbage"``: 200, a multipart/related body whose part is not DICOM;
    ``"error"``: HTTP 500; ``"hang"``: answers only after ``hang_s`` seconds; ``"bearer"``: ``[]`` when ``Authorization: Bearer <token>``
    is sent, else 401. ``seen`` headers are kept on the server for the tests.
    """

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            server.seen.append(dict(self.headers))  # type: ignore[attr-defined]
            if mode == "hang":
                time.sleep(hang_s)
                self._send(200, b"[]", "application/dicom+json")
            elif mode == "error":
                self._send(500, b"internal error", "text/plain")
            elif mode == "bearer":
                if self.headers.get("Authorization") == f"Bearer {token}":
                    self._send(200, b"[]", "application/dicom+json")
                else:
                    self._send(401, b"no", "text/plain")
            elif mode == "multipart-garbage":
                body = (b"--XYZ\r\nContent-Type: application/dicom\r\n\r\n"
                        b"this is not a DICOM file\r\n--XYZ--")
                self._send(200, body, 'multipart/related; type="application/dicom"; '
                           "boundary=XYZ")
            else:
                self._send(200, b"<html>\x00\xff not a PACS {[", "application/dicom+json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
