"""The catcher's HTTP server: threads, routing, security headers, CSRF, basic auth.

Why threads and :mod:`http.server`: the catcher's web side is a handful
of people's browsers and a test suite, not thousands of clients, and its
two long waits (a Server-Sent Events stream, ``/api/v1/messages/wait``)
are simplest as a blocked thread.  Serving HTTP on the SMTP reactor would
mean writing an HTTP/1.1 parser and a second protocol stack on the loop
that must never stall; a :class:`http.server.ThreadingHTTPServer` in a
daemon thread beside it costs nothing on the SMTP path (the SMTP loop only
adds to the store, under its lock) and uses a parser the standard library
maintains.  Threads are bounded: at most :data:`MAX_REQUESTS` requests at
once (one more is answered ``503`` at once), of which at most
:data:`MAX_STREAMS` event streams.

Routes are registered, not dispatched by hand: :func:`route` adds a
``(method, regex, handler)`` to :data:`ROUTES`; a handler gets
``(request, match)`` and returns a :class:`Response` (or a
:class:`Stream` for an event stream).  Other modules add routes by
importing this one and decorating their handlers.

What every request passes before its handler (:meth:`Handler.handle_one`):

* the ``Host`` header, when there is one (every browser sends it), must
  name this server (a loopback name or the address bound) unless remote
  access was allowed: a DNS-rebinding page cannot reach the API through a
  name of its own;
* HTTP basic authentication when the server has a password file;
* a request that writes (any method but ``GET``/``HEAD``) with a body must
  say ``Content-Type: application/json`` (``415`` otherwise: an HTML form
  cannot), and is refused ``403`` when ``Origin`` names another origin, or,
  without ``Origin``, when ``Sec-Fetch-Site`` is neither ``same-origin`` nor
  ``none``.

Every response header value we send is checked for control characters
(:func:`header_value`): a captured value can never split a response.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import ipaddress
import json
import logging
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Pattern, Tuple

log = logging.getLogger("smtpd_compat.catcher")

MAX_REQUESTS = 64
MAX_STREAMS = 32
MAX_BODY = 1 << 20

PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


@dataclass
class Response:
    """What a handler returns: status, body, content type, extra headers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class Stream:
    """A response written by *write* (given the handler's ``wfile``) after
    the headers: the event stream."""

    write: Callable[[Any], None]
    cancel: Optional[Callable[[], None]] = None  # called when the stream is refused
    content_type: str = "text/event-stream; charset=utf-8"


def json_response(data: Any, status: int = 200) -> Response:
    # "replace": a lone surrogate from a broken header must not fail the response
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    return Response(status, body, "application/json; charset=utf-8")


def error(status: int, text: str) -> Response:
    """``{"Error": text}`` with *status*."""
    return json_response({"Error": text}, status)


def ok() -> Response:
    return Response(200, b"ok")


@dataclass
class Request:
    """One request as a handler sees it."""

    method: str
    path: str
    query: Dict[str, str]
    headers: Any
    body: bytes
    app: Any  # the CatcherServer

    def json(self) -> Any:
        """The body as JSON (None when empty); ValueError when it is not JSON."""
        if not self.body.strip():
            return None
        return json.loads(self.body.decode("utf-8"))


Handler_ = Callable[[Request, "re.Match[str]"], Any]
ROUTES: List[Tuple[str, Pattern[str], Handler_]] = []


def route(method: str, pattern: str) -> Callable[[Handler_], Handler_]:
    """Register the decorated function for *method* and the path regex
    *pattern* (matched whole)."""
    def register(func: Handler_) -> Handler_:
        ROUTES.append((method, re.compile(pattern + r"\Z"), func))
        return func

    return register


def find_route(method: str, path: str) -> Tuple[Optional[Handler_], Optional["re.Match[str]"], bool]:
    """``(handler, match, path known)`` for a request."""
    known = False
    for verb, regex, func in ROUTES:
        match = regex.match(path)
        if match is None:
            continue
        known = True
        if verb == method or (method == "HEAD" and verb == "GET"):
            return func, match, True
    return None, None, known


# -- response headers -----------------------------------------------------------------
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def header_value(value: str) -> str:
    """*value* fit for an HTTP header: control characters (CR, LF...) and
    non-Latin-1 characters replaced, so no value can add a header."""
    value = _UNSAFE.sub(" ", value)
    return value.encode("latin-1", "replace").decode("latin-1")


def content_disposition(filename: str) -> str:
    """``attachment; filename*=UTF-8''...`` (RFC 5987/6266) with a plain
    ASCII ``filename=`` fallback: every byte outside a small safe set is
    percent-encoded, so the name cannot end the parameter or the header."""
    name = filename.replace("/", "_").replace("\\", "_").strip() or "part"
    quoted = urllib.parse.quote(name, safe="!#$&+-.^_`|~")
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "part"
    return "attachment; filename=\"%s\"; filename*=UTF-8''%s" % (fallback, quoted)


# -- the checks before a handler ---------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The host of a Host header or an origin's ``host:port`` (no port, no brackets)."""
    if value.startswith("["):
        return value[1:].partition("]")[0].lower()
    return value.rpartition(":")[0].lower() if value.count(":") == 1 else value.lower()


class Auth:
    """HTTP basic authentication against a :class:`~smtpd_compat.PasswordFile`.

    A hashed password costs a PBKDF2 computation per check; a page sends a
    request for every message it shows, so the digests of the header values
    that passed are remembered (at most 64)."""

    def __init__(self, passwords: Any) -> None:
        self.passwords = passwords
        self._passed: Dict[bytes, bool] = {}
        self._lock = threading.Lock()

    def check(self, value: Optional[str]) -> bool:
        if not value or not value.startswith("Basic "):
            return False
        digest = hashlib.sha256(value.encode("utf-8", "replace")).digest()
        with self._lock:
            if digest in self._passed:
                return True
        try:
            user, sep, password = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep or not self.passwords.check(user, password):
            return False
        with self._lock:
            if len(self._passed) >= 64:
                self._passed.clear()
            self._passed[digest] = True
        return True


def cross_origin(headers: Any) -> bool:
    """Whether a writing request comes from another origin (CSRF)."""
    origin = headers.get("Origin")
    if origin is not None:
        parsed = urllib.parse.urlsplit(origin)
        return parsed.scheme not in ("http", "https") or parsed.netloc.lower() != (headers.get("Host") or "").lower()
    site = headers.get("Sec-Fetch-Site")
    return site is not None and site not in ("same-origin", "none")


# -- the server -------------------------------------------------------------------------------
class Handler(http.server.BaseHTTPRequestHandler):
    """One request: the checks, the route, the response."""

    server: "WebServer"
    server_version = "smtpd_compat-catcher"
    sys_version = ""
    timeout = 30  # a client that stops sending its request frees its thread

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's names
        self.handle_one()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def handle_one(self) -> None:
        try:
            response = self._response()
        except Exception:  # noqa: BLE001 - a handler's bug is a 500, never a dropped connection
            log.exception("the catcher's handler for %s %s failed", self.command, self.path)
            response = error(500, "internal error")
        if isinstance(response, Stream) and self.command == "HEAD":
            if response.cancel is not None:
                response.cancel()
            self._send(Response(200, b"", response.content_type))
        elif isinstance(response, Stream):
            self._stream(response)
        else:
            self._send(response)

    def _response(self) -> Any:
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        split = urllib.parse.urlsplit(self.path)
        # IDs are Maildir keys too, which may hold any character but "/".
        path = urllib.parse.unquote(split.path, errors="replace")
        func, match, known = find_route(self.command, path)
        if func is None or match is None:
            return error(405, "method not allowed") if known else error(404, "not found")
        body = self._body()
        if isinstance(body, Response):
            return body
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        request = Request(self.command, path, query, self.headers, body, self.server.app)
        try:
            return func(request, match)
        except ValueError as err:  # a bad parameter or body
            return error(400, str(err) or "bad request")

    def _refusal(self) -> Optional[Response]:
        server = self.server
        if not server.allow_remote and not self._host_allowed():
            return error(421, "unknown Host")
        if server.auth is not None and not server.auth.check(self.headers.get("Authorization")):
            response = error(401, "authentication required")
            response.headers.append(("WWW-Authenticate", 'Basic realm="smtpd_compat catcher", charset="UTF-8"'))
            return response
        if self.command not in ("GET", "HEAD") and cross_origin(self.headers):
            return error(403, "cross-origin request refused")
        return None

    def _host_allowed(self) -> bool:
        value = self.headers.get("Host")
        if not value:
            return True  # not a browser: every browser request names its host
        host = _host_name(value)
        return host in ("localhost", self.server.bound_host.lower()) or is_loopback(host)

    def _body(self) -> Any:
        """The request body (bytes), or the Response refusing it."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return error(400, "bad Content-Length")
        if length < 0 or length > MAX_BODY:
            return error(413, "request body too large")
        if length and self.command not in ("GET", "HEAD"):
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind != "application/json":
                return error(415, "a request body must be application/json")
        return self.rfile.read(length) if length else b""

    def _common_headers(self, content_type: str) -> None:
        self.send_header("Content-Type", header_value(content_type))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self._common_headers(response.content_type)
        names = {name.lower() for name, _ in response.headers}
        if "content-security-policy" not in names:
            self.send_header("Content-Security-Policy", API_CSP)
        for name, value in response.headers:
            self.send_header(name, header_value(value))
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _stream(self, stream: Stream) -> None:
        if not self.server.streams.acquire(blocking=False):
            if stream.cancel is not None:
                stream.cancel()
            self._send(error(503, "too many event streams"))
            return
        try:
            self.send_response(200)
            self._common_headers(stream.content_type)
            self.send_header("Content-Security-Policy", API_CSP)
            self.end_headers()
            self.wfile.flush()
            stream.write(self.wfile)
        except OSError:
            pass  # the client went away
        finally:
            self.server.streams.release()


class WebBindError(OSError):
    """The web server's address cannot be bound (told apart from the SMTP side's)."""


class WebServer(http.server.ThreadingHTTPServer):
    """The threading HTTP server bound to one address, IPv4 or IPv6."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: Tuple[str, int], app: Any, allow_remote: bool = False, auth: Optional[Auth] = None) -> None:
        host = address[0]
        if not allow_remote and not is_loopback(host):
            raise ValueError("web=%r is not a loopback address: allow remote access explicitly "
                             "(web_allow_remote=True, --web-allow-remote)" % (address,))
        try:
            infos = socket.getaddrinfo(host, address[1], 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        except socket.gaierror as err:
            raise WebBindError(err.errno, err.strerror) from None
        self.address_family = infos[0][0]
        self.app = app
        self.allow_remote = allow_remote
        self.auth = auth
        self.bound_host = host
        self.slots = threading.BoundedSemaphore(MAX_REQUESTS)
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        try:
            super().__init__((str(infos[0][4][0]), int(infos[0][4][1])), Handler)
        except OSError as err:
            raise WebBindError(err.errno, err.strerror) from None
        self.thread: Optional[threading.Thread] = None

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback on stderr; a browser that resets
        # a connection is not worth one.  Handler bugs are logged as errors
        # by Handler.handle_one already.
        log.debug("the catcher's web connection from %r failed", client_address, exc_info=True)

    @property
    def address(self) -> Tuple[str, int]:
        """``(host, port)`` bound."""
        name = self.socket.getsockname()
        return str(name[0]), int(name[1])

    def start(self) -> None:
        """Serve in a daemon thread."""
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="smtpd_compat-catcher-web-%d" % self.address[1], daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving, close the socket, join the thread (not from a request's own thread)."""
        thread, self.thread = self.thread, None
        if thread is not None:
            self.shutdown()
            thread.join(5)
        self.server_close()
