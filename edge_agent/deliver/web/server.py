"""The HTTP side of the web page: the standard library's threaded server, a login, and the routes.

Why ``http.server``: it is in every Python, so the page needs nothing from apt or pip on a Pi (no compiler, no
event loop beside the agent's), and it costs a thread per open connection, capped at `MAX_CONNECTIONS`. Its
threads run at a lower CPU priority than the loop (`lower_thread_priority`), and each request holds the GIL only
briefly: JPEG encoding and sleeping release it.

Security (docs/web.md):
- ``/metrics`` (Prometheus) needs the read-only metrics token or the login, and is off without a token;
- everything but ``/healthz``, the login page and the static files needs a login: a session cookie (HttpOnly,
  SameSite=Strict, Secure over HTTPS) from ``POST /login``, or ``Authorization: Bearer <password>`` for scripts;
- a state-changing request is a POST; with the cookie it must carry the session's CSRF token in
  ``X-CSRF-Token`` (the page reads it from its own HTML);
- passwords are compared in constant time, and each wrong one costs `WRONG_PASSWORD_DELAY_S`, one at a time;
- a request (line, headers, body) must arrive within `REQUEST_DEADLINE_S` of its first byte, and one address holds
  at most `MAX_PER_ADDRESS` connections, so a slow or flooding client cannot take every slot;
- the ``Host`` header must be an IP address, ``localhost`` or a name in ``[web] allowed_hosts`` (DNS rebinding);
- every action is a command (`edge_agent.commands.Commands`): the same validation and the same path to the
  loop as MQTT; no route changes anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from edge_agent.deliver.messages import command_args, command_reply, to_json
from edge_agent.deliver.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_agent.deliver.web.metrics import render

if TYPE_CHECKING:
    from edge_agent.deliver.web import WebSink

log = logging.getLogger(__name__)

COOKIE = "edge_session"
#: Open connections served at once; more are closed at accept (a browser opens up to six).
MAX_CONNECTIONS = 32
#: Open connections from one address (IPv6: one /64, `address_key`); more are answered 503 and closed at accept, so
#: that one address (a slow or a password-guessing client) cannot hold every slot and lock the operator out.
MAX_PER_ADDRESS = 12
#: A request's line, headers and body must have arrived this long after its first byte (a TLS handshake, too):
#: a client that sends a byte every few seconds is cut off here, not kept forever.
REQUEST_DEADLINE_S = 10.0
#: Logged-in sessions kept; the oldest goes first.
MAX_SESSIONS = 64
#: A wrong password (form or bearer) is answered after this long, and one at a time: about one guess a second.
WRONG_PASSWORD_DELAY_S = 1.0
#: A command's reply is awaited this long; a longer job (a retrain) answers 202 and shows its progress.
ANSWER_WAIT_S = 5.0
#: The longest a frame request waits for a new frame before answering 204.
FRAME_WAIT_S = 5.0
#: A request body (a command, a login) is at most this long, like an MQTT command.
MAX_BODY = 64 * 1024
#: A Cookie header longer than this is no session (it is not parsed).
MAX_COOKIE = 4096
#: An idle connection (no request started) or a stalled answer is closed after this long.
SOCKET_TIMEOUT_S = 15.0
#: The server's threads run this much "nicer" than the loop (Linux thread niceness).
NICENESS = 10

_STATIC = resources.files("edge_agent.deliver.web") / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
}


@dataclass
class Session:
    csrf: str
    expires: float


def _matches(given: str, digest: bytes) -> bool:
    """Constant time whatever the lengths: the digests compared are of equal length."""
    return hmac.compare_digest(hashlib.sha256(given.encode(errors="replace")).digest(), digest)


class Auth:
    """The password, the sessions, the metrics token and the throttle on wrong passwords."""

    def __init__(self, password: str, session_s: float, metrics_token: str | None = None) -> None:
        self._digest = hashlib.sha256(password.encode()).digest()
        self._metrics = hashlib.sha256(metrics_token.encode()).digest() if metrics_token else None
        self.session_s = session_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._wrong = threading.Lock()  # held through a wrong password's delay: guesses queue one behind another

    def check(self, given: str) -> bool:
        """Constant-time (digests of equal length); a wrong one answers after `WRONG_PASSWORD_DELAY_S`."""
        if _matches(given, self._digest):
            return True
        with self._wrong:
            time.sleep(WRONG_PASSWORD_DELAY_S)
        return False

    def check_metrics(self, given: str) -> bool:
        """The metrics token (read-only: it opens ``/metrics`` and nothing else), else the password (`check`)."""
        if self._metrics is not None and _matches(given, self._metrics):
            return True
        return self.check(given)

    def open(self) -> tuple[str, Session]:
        key, session = secrets.token_urlsafe(32), Session(secrets.token_urlsafe(32), time.time() + self.session_s)
        with self._lock:
            now = time.time()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[key] = session
        return key, session

    def session(self, key: str | None) -> Session | None:
        with self._lock:
            session = self._sessions.get(key) if key else None
            if session is not None and session.expires <= time.time():
                del self._sessions[key]
                return None
        return session

    def close(self, key: str) -> None:
        with self._lock:
            self._sessions.pop(key, None)


def lower_thread_priority() -> None:
    """This thread yields the CPU to the inspection loop (Linux per-thread niceness; elsewhere nothing)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except (AttributeError, OSError):
        pass


def host_allowed(host: str | None, names: frozenset[str]) -> bool:
    """Whether a request's ``Host`` names this camera: an IP address, ``localhost`` or one of ``names``, with at
    most a ``:port`` of digits after it. A DNS rebinding page (a site whose name later resolves to the camera)
    sends its own name, so the browser's same-origin rule does not keep its script from the page's API. Anything
    a browser would not send (text after ``]``, an empty port, an IPv6 scope id) is refused: a lenient parser
    and a proxy in front may read one header as two different hosts."""
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6] or [IPv6]:port
        name, bracket, rest = host[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            return False
        port = rest[1:] if rest else None
    else:  # name, IPv4, either with :port
        name, colon, port = host.partition(":")
        port = port if colon else None
    if port is not None and not (port.isascii() and port.isdigit()):
        return False
    if "%" in name:  # a scope id names the client's link, not this camera
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return not host.startswith("[") and name.rstrip(".") in {"localhost", *names}
    return host.startswith("[") == (address.version == 6)


def address_key(address: str) -> str:
    """What `MAX_PER_ADDRESS` counts for a client address. On a dual-stack socket an IPv4 client arrives as
    ``::ffff:a.b.c.d``: it counts as ``a.b.c.d`` (not as one /64 that holds every IPv4 client). Other IPv6
    addresses count by their /64: one host takes as many addresses in its /64 as it likes."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class DeadlineReader(io.RawIOBase):
    """A connection's reads with a deadline per request. `http.server` only sets a timeout per read, which a client
    resets by sending a byte every few seconds (slowloris): here a request must be in `REQUEST_DEADLINE_S` after
    its first byte. Waiting for a request to start, and writing the answer, keep the idle `SOCKET_TIMEOUT_S`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._deadline: float | None = None  # None: no request started yet

    def readable(self) -> bool:
        return True

    def next_request(self) -> None:
        self._deadline = None

    def done(self) -> None:
        """The request is read: its answer (a frame that waits for the next one, too) is not cut off."""
        self._deadline = None
        self._sock.settimeout(SOCKET_TIMEOUT_S)

    def readinto(self, buffer: Any) -> int:
        if self._deadline is None:
            self._sock.settimeout(SOCKET_TIMEOUT_S)
        else:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the request took longer than {REQUEST_DEADLINE_S:g} s to arrive")
            self._sock.settimeout(left)
        n = self._sock.recv_into(buffer)
        if self._deadline is None and n:
            self._deadline = time.monotonic() + REQUEST_DEADLINE_S
        return n


_BUSY_TEXT = b"too many connections from this address; try again later\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
         b"Retry-After: 10\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, bind: str, port: int, web: WebSink, auth: Auth, live_fps: float,
                 tls: ssl.SSLContext | None, allowed_hosts: frozenset[str] = frozenset()) -> None:
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.web, self.auth, self.live_fps, self.tls = web, auth, live_fps, tls
        self.allowed_hosts = frozenset(name.lower().rstrip(".") for name in allowed_hosts)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._per_address: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self._refused = 0
        super().__init__((bind, port), Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def process_request(self, request: Any, client_address: Any) -> None:
        address = address_key(client_address[0])
        with self._count_lock:
            held = self._per_address.get(address, 0)
            if held < MAX_PER_ADDRESS:
                self._per_address[address] = held + 1
        if held >= MAX_PER_ADDRESS:
            self._refuse(request, f"{address} holds {MAX_PER_ADDRESS} connections")
            return
        if not self._slots.acquire(blocking=False):
            self._leave(address)
            self._refuse(request, f"{MAX_CONNECTIONS} connections open, one from {address}")
            return
        try:
            super().process_request(request, client_address)  # a thread that cannot start raises here
        except BaseException:
            self._slots.release()  # no thread will give them back: the address would be refused for good
            self._leave(address)
            raise

    def _refuse(self, request: Any, why: str) -> None:
        """503 and closed, without a thread: on the accepting thread, so a send that would block is skipped (and
        over TLS nothing is said before a handshake we will not do)."""
        self._refused += 1
        if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
            log.warning("web: %s, refusing (%d refused so far)", why, self._refused)
        if not isinstance(request, ssl.SSLSocket):
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
        self.shutdown_request(request)

    def _leave(self, address: str) -> None:
        with self._count_lock:
            held = self._per_address.pop(address) - 1
            if held:
                self._per_address[address] = held

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        lower_thread_priority()
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
            self._leave(address_key(client_address[0]))

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("web: connection from %s failed", client_address[0], exc_info=True)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "edge-agent"
    sys_version = ""

    def setup(self) -> None:
        self.request.settimeout(REQUEST_DEADLINE_S)  # for the whole handshake (ssl keeps one deadline for it)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, on this connection's thread, not in the accepting one
        super().setup()
        self.rfile.close()
        self._reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.next_request()
        super().handle_one_request()

    def parse_request(self) -> bool:
        """The request line and headers are read; the Host is checked before anything else is done."""
        if not super().parse_request():
            return False
        if self.command != "POST":  # a POST's body is read under the deadline too (`_body`)
            self._reader.done()
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or not self.path.startswith("/"):
            return self._refuse(HTTPStatus.BAD_REQUEST, b"send one Host header and a path (not a URL) as the "
                                                        b"request target\n", f"Host {hosts!r}, target {self.path!r}")
        if not host_allowed(hosts[0], self.server.allowed_hosts):
            return self._refuse(HTTPStatus.MISDIRECTED_REQUEST, b"this camera answers to its IP address, localhost, "
                                                                b"or a name in [web] allowed_hosts\n",
                                f"Host {hosts[0]!r}")
        return True

    def _refuse(self, status: int, text: bytes, why: str) -> bool:
        """Answered before the request is served, and the connection closed; False, for `parse_request`."""
        self._reader.done()
        self.close_connection = True
        log.info("web: %s from %s refused", why, self.client_address[0])
        self._send(status, text, headers={"Connection": "close"})
        return False

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web %s: " + format, self.client_address[0], *args)

    # ---- answers ----------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {**_SECURITY_HEADERS, "Content-Type": content_type, "Content-Length": str(len(body)),
                            **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, to_json(obj), "application/json")

    def _redirect(self, where: str, headers: dict[str, str] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, headers={"Location": where, **(headers or {})})

    def _static(self, name: str, replace: dict[str, str] | None = None, status: int = HTTPStatus.OK) -> None:
        path = _STATIC / name
        suffix = "." + name.rsplit(".", 1)[-1]
        if "/" in name or name.startswith(".") or suffix not in _TYPES or not path.is_file():
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n")
        body = path.read_bytes()
        for key, value in (replace or {}).items():
            body = body.replace(key.encode(), value.encode())
        self._send(status, body, _TYPES[suffix])

    # ---- who asks ---------------------------------------------------------------------------------------------
    def _cookie(self) -> str | None:
        """The session key, read by hand: `http.cookies` takes quadratic time on a crafted quoted value
        (CVE-2024-7592 on Pythons before 3.11.10), before any login, holding the GIL the loop needs. The key is
        ours (URL-safe), so no unquoting is needed; an oversized header is no session."""
        header = self.headers.get("Cookie", "")
        if len(header) > MAX_COOKIE:
            return None
        for item in header.split(";"):
            name, _, value = item.strip().partition("=")
            if name == COOKIE:
                return value or None
        return None

    def _allowed(self, changes: bool) -> bool:
        """A script's bearer password, or a session (with its CSRF token when the request ``changes`` anything)."""
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return self.server.auth.check(header[len("Bearer "):])
        session = self.server.auth.session(self._cookie())
        if session is None:
            return False
        return not changes or hmac.compare_digest(self.headers.get("X-CSRF-Token", "").encode(),
                                                  session.csrf.encode())

    def _body(self) -> bytes | None:
        """The request's body; None (answered, connection closed) when it cannot be read safely. A chunked body
        is refused, not ignored: left on the connection, its bytes would be read as the next request."""
        if "Transfer-Encoding" in self.headers:
            self._reader.done()
            self._send(HTTPStatus.NOT_IMPLEMENTED, b"chunked bodies are not accepted: send Content-Length\n",
                       headers={"Connection": "close"})
            self.close_connection = True
            return None
        lengths = self.headers.get_all("Content-Length") or ["0"]
        length = int(lengths[0]) if len(lengths) == 1 and lengths[0].isdigit() else -1
        if not 0 <= length <= MAX_BODY:
            self._reader.done()
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"at most {MAX_BODY} bytes\n".encode(),
                       headers={"Connection": "close"})
            self.close_connection = True
            return None
        body = self.rfile.read(length)
        self._reader.done()
        return body

    # ---- routes -----------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        if path == "/healthz":
            return self._send(HTTPStatus.OK, b"ok\n")
        if path == "/metrics":
            return self._metrics()
        if path == "/login":
            return self._static("login.html", {"{{error}}": ""})
        if path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path == "/":
            session_key = self._cookie()
            session = self.server.auth.session(session_key)
            if session is None:
                return self._redirect("/login")
            return self._static("index.html", {"{{csrf}}": session.csrf, "{{live_fps}}": f"{self.server.live_fps:g}"})
        if not path.startswith("/api/"):
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n")
        if not self._allowed(changes=False):
            return self._json(HTTPStatus.UNAUTHORIZED, {"ok": False, "error": "log in first"})
        return self._api(path[len("/api/"):], query)

    def _api(self, route: str, query: dict[str, list[str]]) -> None:
        web = self.server.web
        after = _int(query.get("after", ["0"])[0])
        if route == "state":
            return self._json(HTTPStatus.OK, {"state": self._status(), "progress": web.progress(),
                                              "broker": web.broker() if web.broker else None})
        if route == "history":
            return self._json(HTTPStatus.OK, web.since(after))
        if route == "frame.jpg":
            frame = web.latest_jpeg(after, FRAME_WAIT_S)
            if frame is None:
                return self._send(HTTPStatus.NO_CONTENT)
            return self._send(HTTPStatus.OK, frame[1], "image/jpeg", {"X-Frame": str(frame[0])})
        if route.startswith("reject/") and route.endswith(".jpg"):
            body = web.reject_jpeg(_int(route[len("reject/"):-len(".jpg")]))
        elif route.startswith("image/") and route.endswith(".jpg"):
            body = web.image(route[len("image/"):-len(".jpg")])
        else:
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n")
        if body is None:
            return self._send(HTTPStatus.NOT_FOUND, b"no such picture\n")
        return self._send(HTTPStatus.OK, body, "image/jpeg", {"Cache-Control": "no-store"})

    def _metrics(self) -> None:
        """Prometheus's scrape: the metrics token or the page's login (bearer password or session)."""
        web = self.server.web
        if web.metrics is None:
            return self._send(HTTPStatus.NOT_FOUND, b"metrics are off: set [web] metrics_token_env or "
                                                    b"metrics_token_file\n")
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            allowed = self.server.auth.check_metrics(header[len("Bearer "):])
        else:
            allowed = self._allowed(changes=False)
        if not allowed:
            return self._send(HTTPStatus.UNAUTHORIZED, b"send Authorization: Bearer <the metrics token>\n")
        self._send(HTTPStatus.OK, render(self._status(), web.broker() if web.broker else None, web.metrics),
                   METRICS_CONTENT_TYPE)

    def _status(self) -> dict[str, Any]:
        """The agent's state now, through the ``status`` command (it reads a snapshot, off the loop); the last
        published state when there is no command handler."""
        handler = self.server.web.on_command
        return handler("status", {}) if handler else self.server.web.last_state()

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        if body is None:
            return None
        if path == "/login":
            return self._login(body)
        if not self._allowed(changes=True):
            return self._json(HTTPStatus.FORBIDDEN, {"ok": False, "error": "log in first (and send the page's "
                                                                           "X-CSRF-Token)"})
        if path == "/logout":
            self.server.auth.close(self._cookie() or "")
            return self._redirect("/login", {"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; "
                                                           "SameSite=Strict"})
        if path.startswith("/api/command/"):
            return self._command(path[len("/api/command/"):], body)
        return self._send(HTTPStatus.NOT_FOUND, b"not found\n")

    def _login(self, body: bytes) -> None:
        given = parse_qs(body.decode(errors="replace")).get("password", [""])[0]
        if not self.server.auth.check(given):
            log.warning("web: wrong password from %s", self.client_address[0])
            return self._static("login.html", {"{{error}}": "Wrong password."}, HTTPStatus.UNAUTHORIZED)
        key, session = self.server.auth.open()
        secure = "; Secure" if self.server.tls else ""
        log.info("web: login from %s", self.client_address[0])
        self._redirect("/", {"Set-Cookie": f"{COOKIE}={key}; Max-Age={int(self.server.auth.session_s)}; Path=/; "
                                           f"HttpOnly; SameSite=Strict{secure}"})

    def _command(self, name: str, body: bytes) -> None:
        """One command through the same handler as MQTT; its reply has the same shape (``ok``, ``result`` or
        ``error``). A job that takes longer than `ANSWER_WAIT_S` answers 202 and goes on."""
        handler = self.server.web.on_command
        if handler is None:
            return self._json(HTTPStatus.SERVICE_UNAVAILABLE, command_reply({}, error="no command handler"))
        try:
            args = command_args(body)  # the same reading as an MQTT payload
        except ValueError as exc:
            return self._json(HTTPStatus.BAD_REQUEST, command_reply({}, error=str(exc)))
        log.info("web: command %s %s from %s", name, {k: v for k, v in args.items() if k != "token"},
                 self.client_address[0])
        try:
            result = handler(name, args)
            if isinstance(result, Future):
                result = result.result(ANSWER_WAIT_S)
        except FutureTimeout:
            return self._json(HTTPStatus.ACCEPTED, {"ok": True, "pending": True})
        except (ValueError, PermissionError, RuntimeError) as exc:
            return self._json(HTTPStatus.BAD_REQUEST, command_reply(args, error=str(exc)))
        except Exception as exc:
            log.exception("web: command %s failed", name)
            return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, command_reply(args, error=exc))
        try:
            body = to_json(command_reply(args, result))
        except (TypeError, ValueError) as exc:
            return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, command_reply(args, error=exc))
        self._send(HTTPStatus.OK, body, "application/json")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
