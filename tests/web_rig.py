"""A running agent with its web page, for tests/test_web.py and tests/test_web_browser.py: the shipped model, a
watched folder the test drops real images into, fitted on real good parts before the loop starts."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.cli import build_agent
from edge_agent.config import config_from_dict
from edge_agent.deliver.sink import leaves
from edge_agent.deliver.web import WebSink
from tests.conftest import FEW_IMAGE_TARGET, RealSet, drop_images
from tests.mqtt_broker import wait_until

PASSWORD = "correct horse battery"
PASSWORD_ENV = "EDGE_TEST_WEB_PASSWORD"
COMMAND_TOKEN_ENV = "EDGE_TEST_MQTT_COMMAND_TOKEN"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebRig:
    def __init__(self, tmp: Path, real_set: RealSet, detector: str = "combined", roi: list[float] | None = None,
                 mqtt: dict[str, Any] | None = None, **web: Any) -> None:
        """``mqtt``: the [mqtt] section (a test broker's); MQTT is off without it. ``web``: more [web] keys."""
        self.tmp, self.set = tmp, real_set
        self.frames = tmp / "frames"
        self.frames.mkdir()
        self.good = tmp / "good_parts"
        self.good.mkdir()
        for p in real_set.train_good[:5]:
            shutil.copyfile(p, self.good / p.name)
        os.environ[PASSWORD_ENV] = PASSWORD
        os.environ[COMMAND_TOKEN_ENV] = "an MQTT secret the page does not need"
        self.config = config_from_dict({
            "device": {"id": "web-test", "state_dir": str(tmp / "state")},
            "model": {"delegate": "cpu"},
            "source": {"kind": "folder", "path": str(self.frames), "watch": True, "reopen_min_s": 0.1,
                       "roi": roi or []},
            "trigger": {"max_fps": 20},
            "augmentation": {"preset": "bottle", "factor": 2},
            "detector": {"name": detector},
            "threshold": {"target_false_reject": FEW_IMAGE_TARGET},
            "retrain": {"n_images": 3, "timeout_s": 60, "folders": [str(tmp)]},
            "mqtt": {"enabled": mqtt is not None, "command_token_env": COMMAND_TOKEN_ENV, **(mqtt or {})},
            "web": {"enabled": True, "port": 0, "password_env": PASSWORD_ENV, **web},
        })
        self.agent = build_agent(self.config)
        self.web = next(leaf for leaf in leaves(self.agent.sink) if isinstance(leaf, WebSink))
        self.url = self.web.url
        self.agent.request_retrain(n_images=5, folder=str(self.good))
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.agent.state()["status"] == "running", 120), "the first fit did not finish"

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()

    def current(self) -> str:
        return (self.config.state_dir / "detectors" / "current.json").read_text()

    def drop(self, paths: list[Path], prefix: str) -> list[str]:
        return drop_images(self.frames, paths, prefix)

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        url = urlsplit(self.url)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            connection.request(method, path, body.encode() if isinstance(body, str) else body, headers or {})
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            connection.close()

    def login(self, password: str = PASSWORD) -> tuple[str, str]:
        """(the session cookie header, the page's CSRF token)."""
        reply = self.request("POST", "/login", f"password={password}",
                             {"Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status == 303, reply.status
        cookie = reply.headers["Set-Cookie"].split(";")[0]
        page = self.request("GET", "/", headers={"Cookie": cookie}).body.decode()
        csrf = page.split('<meta name="csrf" content="')[1].split('"')[0]
        return cookie, csrf
