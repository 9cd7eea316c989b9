"""The operator's web page, served by the agent itself ([web], docs/web.md): live view, score history, rejects,
retrain and rollback, the threshold, and ``/api/state`` and ``/healthz`` for scripts.

`WebSink` is an output like the others (`edge_agent.deliver.sink`): the loop hands it frames and messages
(`edge_agent.deliver.web.live`), and a small HTTP server on its own threads shows them
(`edge_agent.deliver.web.server`). It is also a command source: each action on the page is a command through the
same handler as MQTT (`edge_agent.commands.Commands`), which hands the loop a job. Nothing else reaches the agent.
The page's files (``static/``) ship in the package: a line is often offline, so nothing comes from a CDN.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Any

from edge_agent.deliver.web.live import Box, LiveState
from edge_agent.deliver.web.metrics import VerdictStats
from edge_agent.deliver.web.server import Auth, Server, tls_context

log = logging.getLogger(__name__)


class WebSink(LiveState):
    """Listens from construction (a port in use stops the agent at start, naming it) and serves from `start` to
    `stop`. ``tls``: (certificate, key) PEM files for HTTPS; ``allowed_hosts``: the names (beside IP addresses and
    ``localhost``) a browser may reach it by; ``metrics_token``: serve ``/metrics`` to Prometheus with it."""

    def __init__(self, password: str, bind: str = "127.0.0.1", port: int = 8080, *, history: int = 500,
                 gallery: int = 24, live_fps: float = 4.0, session_hours: float = 12.0, box: Box | None = None,
                 jpeg_quality: int = 80, tls: tuple[str, str] | None = None,
                 broker: Callable[[], dict[str, Any]] | None = None,
                 allowed_hosts: frozenset[str] = frozenset(), metrics_token: str | None = None) -> None:
        super().__init__(history, gallery, box, jpeg_quality, broker, live_fps)
        self.on_command: Callable[[str, dict[str, Any]], Any] | None = None
        self.metrics = VerdictStats() if metrics_token else None
        self._server = Server(bind, port, self, Auth(password, session_hours * 3600, metrics_token), live_fps,
                              tls_context(*tls) if tls else None, allowed_hosts)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self._server.tls else 'http'}://{host}:{port}/"

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        seq = super().publish_verdict(verdict)
        if self.metrics is not None:
            self.metrics.observe(verdict)
        return seq

    def start(self) -> None:
        super().start()
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                            name="web", daemon=True)
            self._thread.start()
            log.info("web page on %s", self.url)
            if self._server.tls is None and not is_loopback(self._server.server_address[0]):
                log.warning("web: the page listens on %s without TLS: its password and session cookie cross the "
                            "network in clear text. Set [web] tls_cert and tls_key, or bind = \"127.0.0.1\" "
                            "behind an HTTPS reverse proxy (docs/web.md, HTTPS)", self.url)

    def stop(self, timeout: float = 5) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self._server.server_close()
        super().stop(timeout)


def is_loopback(address: str) -> bool:
    """Whether ``address`` (the listening socket's) reaches only this machine."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"
