"""One persistent HTTP/1.1 keep-alive connection to the service.

The service's warm round trip is well under 2 ms, so a fresh TCP connection per call
(what ``urllib`` does) would cost more than the call itself. A ``Connection`` is used by
one thread at a time; ``Client`` keeps one per thread.
"""

import http.client
import json
import socket
import ssl
import threading
import urllib.parse

from .errors import error_from_response

__all__ = ["Connection", "Interrupted", "parse_url"]

# Errors a request sees when the service closed an idle keep-alive connection under it;
# such a request is retried once on a fresh connection.
STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


class Interrupted(Exception):
    """The connection was interrupted from another thread (``Connection.interrupt``)."""


def parse_url(url):
    """``(scheme, host, port, base_path)`` of a service URL such as
    ``http://127.0.0.1:8470``. Raises ``ValueError`` naming the URL when it is unusable."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "service URL %r is not usable: expected http://HOST[:PORT] or "
            "https://HOST[:PORT]" % (url,)
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError("service URL %r has an invalid port" % (url,)) from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


class _NoDelayHTTPConnection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _NoDelayHTTPSConnection(http.client.HTTPSConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Connection:
    """A keep-alive connection to ``url`` that reconnects when needed.

    ``request`` answers the decoded JSON body of a 2xx answer and raises the mapped
    exception (``ScifaasError``, ``TaskFailed``, ``TaskTimeout``) for anything else.
    """

    def __init__(self, url, token=None, ssl_context=None):
        self.url = url
        self.scheme, self.host, self.port, self.base_path = parse_url(url)
        self.token = token
        self.ssl_context = ssl_context
        self._conn = None
        # Guards `_interrupted` and the socket against `interrupt()` from another thread.
        self._interrupt_lock = threading.Lock()
        self._interrupted = False

    def _new_connection(self, timeout):
        if self.scheme == "https":
            context = self.ssl_context or ssl.create_default_context()
            return _NoDelayHTTPSConnection(
                self.host, self.port, timeout=timeout, context=context
            )
        return _NoDelayHTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, timeout=60.0, want_headers=False):
        """Send one request; ``path`` starts with ``/v1``, ``body`` is bytes or None.

        ``timeout`` bounds the connect and each wait for data from the service (a
        long-poll must pass one longer than the time it asks the service to wait).
        With ``want_headers`` the answer is ``(document, headers)``.
        """
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = self.base_path + path
        for attempt in (1, 2):
            reused = self._conn is not None and self._conn.sock is not None
            try:
                status, reason, answer_headers, data = self._exchange(
                    method, url, body, headers, timeout
                )
                break
            except Interrupted:
                self.close()
                raise
            except STALE_CONNECTION_ERRORS as err:
                self.close()
                if self._interrupted:
                    raise Interrupted() from err
                if reused and attempt == 1:
                    continue
                raise ConnectionError(
                    "lost the connection to the scifaas service at %s: %s"
                    % (self.url, err)
                ) from err
            except (socket.timeout, TimeoutError) as err:
                self.close()
                raise TimeoutError(
                    "the scifaas service at %s did not answer %s %s within %.1f s"
                    % (self.url, method, path, timeout)
                ) from err
            except OSError as err:
                self.close()
                if self._interrupted:
                    raise Interrupted() from err
                raise ConnectionError(
                    "cannot reach the scifaas service at %s: %s" % (self.url, err)
                ) from err
            except BaseException:
                # The connection is in an unknown state (http.client raises
                # CannotSendRequest and friends after an interrupted exchange).
                self.close()
                raise
        document = _decode(data)
        if status >= 400:
            raise error_from_response(status, document, reason)
        if want_headers:
            return document, answer_headers
        return document

    def _exchange(self, method, url, body, headers, timeout):
        conn = self._conn
        if conn is None:
            conn = self._conn = self._new_connection(timeout)
        if conn.sock is None:
            conn.timeout = timeout
            conn.connect()
        else:
            conn.sock.settimeout(timeout)
        with self._interrupt_lock:
            if self._interrupted:
                raise Interrupted()
        conn.request(method, url, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.will_close:
            conn.close()
        return response.status, response.reason, response.headers, data

    def interrupt(self):
        """Make the request in progress (in another thread) and every later one raise
        ``Interrupted`` at once."""
        with self._interrupt_lock:
            self._interrupted = True
            conn = self._conn
            sock = conn.sock if conn is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __del__(self):
        # A Client's per-thread connections end with their thread or their Client.
        try:
            self.close()
        except Exception:
            pass

    def close(self):
        with self._interrupt_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _decode(data):
    """The JSON document of an answer body; the raw bytes when it is not JSON."""
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data
