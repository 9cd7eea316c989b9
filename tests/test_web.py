"""The web page's server without a browser: who may see and change what, and that every change is a command.

A real agent (shipped model, real images) runs behind it, so "changes nothing" is checked on the detector files
the loop owns, not on a mock."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from edge_agent.config import ConfigError, config_from_dict
from edge_agent.deliver.web import WebSink
from edge_agent.deliver.web.live import LiveState
from edge_agent.deliver.web.server import (COOKIE, MAX_CONNECTIONS, MAX_PER_ADDRESS, REQUEST_DEADLINE_S,
                                           WRONG_PASSWORD_DELAY_S, address_key)
from tests.mqtt_broker import wait_until
from tests.web_rig import PASSWORD, PASSWORD_ENV, WebRig


@pytest.fixture(scope="module")
def rig(tmp_path_factory, real_set):
    r = WebRig(tmp_path_factory.mktemp("web"), real_set)
    yield r
    r.stop()


def test_only_the_liveness_endpoint_and_the_login_page_are_open(rig: WebRig) -> None:
    assert rig.request("GET", "/healthz").body == b"ok\n"
    assert rig.request("GET", "/login").status == 200
    assert rig.request("GET", "/").status == 303  # to the login page
    for path in ("/api/state", "/api/history", "/api/frame.jpg", "/api/reject/1.jpg", "/api/image/retrain/images.jpg"):
        reply = rig.request("GET", path)
        assert reply.status == 401 and b"score" not in reply.body, path
    forged = rig.request("GET", "/api/state", headers={"Cookie": f"{COOKIE}=made-up"})
    assert forged.status == 401


def test_a_wrong_password_is_refused_after_a_delay_and_sets_no_cookie(rig: WebRig) -> None:
    t0 = time.monotonic()
    reply = rig.request("POST", "/login", "password=hunter22", {"Content-Type": "application/x-www-form-urlencoded"})
    assert time.monotonic() - t0 >= WRONG_PASSWORD_DELAY_S * 0.9
    assert reply.status == 401 and "Set-Cookie" not in reply.headers and b"Wrong password" in reply.body
    t0 = time.monotonic()
    assert rig.request("GET", "/api/state", headers={"Authorization": "Bearer hunter22"}).status == 401
    assert time.monotonic() - t0 >= WRONG_PASSWORD_DELAY_S * 0.9


def test_the_login_cookie_is_httponly_and_same_site_strict(rig: WebRig) -> None:
    reply = rig.request("POST", "/login", f"password={PASSWORD}", {"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 303 and reply.headers["Location"] == "/"
    flags = {f.strip() for f in reply.headers["Set-Cookie"].split(";")[1:]}
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= flags and "Secure" not in flags  # Secure with TLS only
    cookie = reply.headers["Set-Cookie"].split(";")[0]
    state = rig.request("GET", "/api/state", headers={"Cookie": cookie}).json()
    assert state["state"]["status"] == "running" and state["broker"] is None  # MQTT is off here
    assert "script-src 'self'" in rig.request("GET", "/", headers={"Cookie": cookie}).headers["Content-Security-Policy"]


def test_a_change_without_login_or_without_the_csrf_token_changes_nothing(rig: WebRig) -> None:
    before = rig.current()
    threshold = rig.agent.state()["threshold"]
    cookie, csrf = rig.login()
    attempts = [
        {},  # no login
        {"Cookie": cookie},  # logged in, no CSRF token (a form posted from another site)
        {"Cookie": cookie, "X-CSRF-Token": "not-the-token"},
        {"Cookie": f"{COOKIE}=made-up", "X-CSRF-Token": csrf},
    ]
    for headers in attempts:
        for command, body in (("threshold", {"value": threshold * 2}), ("rollback", {}), ("retrain", {})):
            reply = rig.request("POST", f"/api/command/{command}", json.dumps(body), headers)
            assert reply.status == 403, (headers, command)
    assert rig.request("GET", "/api/command/rollback", headers={"Cookie": cookie}).status == 404  # GET is no action
    time.sleep(1.0)  # a job that slipped through would have run by now (the loop turns every 0.5 s at most)
    assert rig.current() == before and rig.agent.state()["threshold"] == threshold
    assert not rig.agent.retraining


def test_a_crafted_cookie_costs_no_time_before_the_login_check(rig: WebRig) -> None:
    """`http.cookies` took 16 s of CPU (holding the GIL the loop needs) on one 64 KB quoted cookie (CVE-2024-7592);
    the hand parser reads none of an oversized header."""
    t0 = time.monotonic()
    reply = rig.request("GET", "/api/state", headers={"Cookie": f'{COOKIE}="' + "\\" * 30000 + '"'})
    assert reply.status == 401 and time.monotonic() - t0 < 2.0


def test_a_chunked_body_is_refused_not_read_as_a_second_request(rig: WebRig) -> None:
    """Ignored, a chunked body stayed on the connection and was served as the next request (smuggling behind a
    proxy that reuses connections)."""
    import socket

    url = urlsplit(rig.url)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(b"POST /api/command/status HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + body)
        replies = b""
        while chunk := conn.recv(65536):
            replies += chunk
    assert replies.startswith(b"HTTP/1.0 501") or replies.startswith(b"HTTP/1.1 501"), replies[:80]
    assert replies.count(b"HTTP/1.") == 1  # the connection was closed: nothing served for /smuggled


def _trickle(url: str, head: bytes, drip: bytes, source: str = "127.0.0.1") -> float:
    """Sends ``head``, then ``drip`` a byte a second (each within the old per-read timeout); the seconds until
    the server closed the connection (60 if it never did)."""
    parts = urlsplit(url)
    t0 = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=1, source_address=(source, 0)) as conn:
        conn.sendall(head)
        for byte in drip * 60:
            try:
                conn.sendall(bytes([byte]))
                if conn.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        return time.monotonic() - t0


def test_a_request_that_trickles_in_is_cut_off_at_the_deadline(rig: WebRig) -> None:
    """Slowloris: a byte every second kept a connection (and its slot) forever, the timeout being per read. The
    headers and a POST's body each must arrive within the deadline."""
    took: dict[str, float] = {}
    slow_headers = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: abcdefghij\r\n")
    slow_body = (b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60000\r\n\r\n", b"password=x")
    threads = [threading.Thread(target=lambda k=k, a=a: took.__setitem__(k, _trickle(rig.url, *a)))
               for k, a in (("headers", slow_headers), ("body", slow_body))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert REQUEST_DEADLINE_S - 1 < took["headers"] < REQUEST_DEADLINE_S + 4, took
    assert REQUEST_DEADLINE_S - 1 < took["body"] < REQUEST_DEADLINE_S + 4, took
    assert rig.request("GET", "/healthz").body == b"ok\n"


def test_one_address_cannot_take_every_connection(rig: WebRig) -> None:
    """A client (here 127.0.0.2) that opens every slot, or queues wrong passwords on them, locked the operator out;
    its extra connections are now answered 503 and the operator (127.0.0.1) gets in."""
    url = urlsplit(rig.url)
    held, refused = [], 0
    try:
        for _ in range(MAX_CONNECTIONS + 4):
            conn = socket.create_connection((url.hostname, url.port), timeout=5, source_address=("127.0.0.2", 0))
            held.append(conn)
        time.sleep(0.5)
        for conn in held:
            conn.settimeout(0.2)
            try:
                refused += conn.recv(1024).startswith(b"HTTP/1.1 503")
            except TimeoutError:
                pass  # accepted, waiting for its request
        assert refused == len(held) - MAX_PER_ADDRESS
        t0 = time.monotonic()
        cookie, _ = rig.login()  # the operator, while the other address holds its connections
        assert rig.request("GET", "/api/state", headers={"Cookie": cookie}).status == 200
        assert time.monotonic() - t0 < 5
    finally:
        for conn in held:
            conn.close()
    assert wait_until(lambda: _opens(url, "127.0.0.2"), 10)  # its slots come back once it lets go


def _opens(url, source: str) -> bool:
    with socket.create_connection((url.hostname, url.port), timeout=5, source_address=(source, 0)) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return conn.recv(1024).startswith(b"HTTP/1.1 200")


def test_only_ip_addresses_localhost_and_allowed_names_are_served(tmp_path: Path) -> None:
    """DNS rebinding: a page on attacker.example whose name then resolves to the camera runs its script against
    the page's API as if same-origin; the Host it sends is refused (421), even with the right password."""
    import http.client

    web = WebSink(PASSWORD, port=0, allowed_hosts=frozenset({"camera3.line1.example"}))
    web.start()
    try:
        port = urlsplit(web.url).port

        def status(host: str | None, path: str = "/login", *more_hosts: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.putrequest("GET", path, skip_host=True)
                for name in ([] if host is None else [host, *more_hosts]):
                    conn.putheader("Host", name)
                conn.putheader("Authorization", f"Bearer {PASSWORD}")
                conn.endheaders()
                return conn.getresponse().status
            finally:
                conn.close()

        for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "[::1]:8080", "10.1.2.3",
                     f"camera3.line1.example:{port}", "CAMERA3.line1.example."):
            assert status(host) == 200, host
            assert status(host, "/api/state") == 200, host
        for host in ("attacker.example", f"attacker.example:{port}", "camera3.line1.example.attacker.example",
                     "localhost.attacker.example"):
            assert status(host) == 421, host
            assert status(host, "/api/state") == 421, host
        assert status(None) == 400
        # read otherwise by a proxy or a browser: text after "]", an empty or a second port, a scope id, an IPv4
        # address in brackets, a trailing dot after an address (a name then, not the address)
        for host in ("[::1]attacker.example", "[::1]:", "[::1]:80:1", "camera3.line1.example:",
                     "attacker.example:8080:1", "127.0.0.1:8o", "fe80::1%25attacker.example", "[fe80::1%25eth0]",
                     "[fe80::1%eth0]:80", "::1", "[127.0.0.1]", "127.0.0.1."):
            assert status(host) == 421, host
        assert status("127.0.0.1", "/login", "attacker.example") == 400  # two Host headers
        assert status("attacker.example", "/login", "127.0.0.1") == 400
        assert status("127.0.0.1", "http://attacker.example/login") == 400  # the URL's authority replaces Host
        assert status("127.0.0.1", "http://127.0.0.1/api/state") == 400
    finally:
        web.stop()


def test_a_page_on_the_network_without_tls_warns_once_at_start(tmp_path: Path, caplog) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    for bind, tls, warns in (("0.0.0.0", None, True), ("127.0.0.1", None, False), ("0.0.0.0", (str(cert), str(key)),
                                                                                  False)):
        caplog.clear()
        web = WebSink(PASSWORD, bind=bind, port=0, tls=tls)
        with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.web"):
            web.start()
        web.stop()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == warns, (bind, tls, warnings)
        if warns:
            assert "clear text" in warnings[0] and "tls_cert" in warnings[0] and "reverse proxy" in warnings[0]


def test_a_change_goes_through_the_command_handler_and_rollback_restores(rig: WebRig) -> None:
    before, threshold = rig.current(), rig.agent.state()["threshold"]
    cookie, csrf = rig.login()
    headers = {"Cookie": cookie, "X-CSRF-Token": csrf, "Content-Type": "application/json"}
    # The same validation as MQTT, with its message.
    bad = rig.request("POST", "/api/command/threshold", json.dumps({"value": "high"}), headers)
    assert bad.status == 400 and bad.json() == {"ok": False, "error": "value must be a number, got 'high'"}
    assert rig.request("POST", "/api/command/format", "{}", headers).json()["error"].startswith("unknown command")
    # The MQTT command token ([mqtt] command_token_env is set here) is the broker's: the page's login stands for it.
    reply = rig.request("POST", "/api/command/threshold", json.dumps({"value": threshold * 1.5}), headers)
    assert reply.status == 200 and reply.json()["ok"], reply.body
    assert reply.json()["result"]["threshold"] == pytest.approx(threshold * 1.5)
    assert rig.current() != before
    reply = rig.request("POST", "/api/command/rollback", "", headers)
    assert reply.status == 200 and reply.json()["ok"], reply.body
    assert rig.current() == before and rig.agent.state()["threshold"] == threshold
    # A script: the password as a bearer token, no cookie and no CSRF token.
    state = rig.request("GET", "/api/state", headers={"Authorization": f"Bearer {PASSWORD}"}).json()["state"]
    assert state["threshold"] == threshold


def test_verdicts_rejects_and_frames_reach_the_page(rig: WebRig) -> None:
    cookie, _ = rig.login()
    auth = {"Cookie": cookie}
    seen = rig.request("GET", "/api/history", headers=auth).json()["last"]
    assert rig.request("GET", "/api/frame.jpg?after=0", headers=auth).status in (200, 204)  # starts watching
    names = rig.drop(rig.set.test_good[:2], "poll_good") + rig.drop(rig.set.defects[:2], "poll_defect")
    assert wait_until(lambda: rig.request("GET", f"/api/history?after={seen}", headers=auth).json()["last"]
                      >= seen + 4, 60)
    history = rig.request("GET", f"/api/history?after={seen}", headers=auth).json()
    assert sorted(v["frame"] for v in history["verdicts"]) == sorted(names)
    rejected = [v for v in history["verdicts"] if v["verdict"] == "anomalous"]
    assert rejected, "the broken parts were not rejected"
    assert {r["seq"] for r in history["rejects"]} >= {v["seq"] for v in rejected}
    reject = history["rejects"][-1]
    picture = rig.request("GET", f"/api/reject/{reject['id']}.jpg", headers=auth)
    assert picture.status == 200 and picture.body[:2] == b"\xff\xd8"
    frame = rig.request("GET", "/api/frame.jpg?after=0", headers=auth)
    assert frame.status == 200 and frame.body[:2] == b"\xff\xd8" and int(frame.headers["X-Frame"]) >= 1
    assert rig.request("GET", "/api/image/retrain/images.jpg", headers=auth).body[:2] == b"\xff\xd8"


def test_the_latest_frame_is_kept_only_while_watched_and_encoded_once() -> None:
    live = LiveState(live_fps=20)
    live.start()
    try:
        image = np.full((960, 1280), 128, np.uint8)  # grayscale, larger than the live view
        live.publish_frame(image, None)
        assert live._frame is None  # nobody watches: nothing held
        assert live.latest_jpeg(0, 0.01) is None
        live.publish_frame(image, {"verdict": "anomalous", "score": 2.0, "threshold": 1.0, "seq": 7})
        first = live.latest_jpeg(0, 2)
        assert first is not None and first[0] == 1 and first[1][:2] == b"\xff\xd8"
        assert live.latest_jpeg(0, 1)[1] is first[1]  # a second browser gets the same encoding
        assert live.latest_jpeg(1, 0.05) is None  # nothing newer
        drawn = []
        draw = live._draw
        live._draw = lambda *a: drawn.append(1) or draw(*a)
        for _ in range(50):  # a loop much faster than the live view: frames in between are skipped, not queued
            live.publish_frame(image, None)
        assert wait_until(lambda: live.latest_jpeg(1, 0.5)[0] == 51, 5)  # the newest one, in the end
        assert len(drawn) <= 5  # at most live_fps a second, not one per frame
    finally:
        live.stop()
    for i in range(700):
        live.publish_verdict({"seq": i, "score": 1.0, "threshold": 2.0, "verdict": "good"})
    since = live.since(0)
    assert since["last"] == 700 and len(since["verdicts"]) == 500  # bounded, newest kept
    assert live.since(699)["verdicts"][0]["seq"] == 699


def _web_config(tmp_path: Path, **web) -> dict:
    return {"source": {"path": str(tmp_path)}, "mqtt": {"enabled": False}, "web": {"enabled": True, **web}}


def test_web_config_errors_name_the_key(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"\[web\] enabled = true needs password_env or password_file"):
        config_from_dict(_web_config(tmp_path))
    with pytest.raises(ConfigError, match=r"\[web\] give password_env or password_file, not both"):
        config_from_dict(_web_config(tmp_path, password_env="X", password_file="/x"))
    with pytest.raises(ConfigError, match=r"\[web\] tls_cert and tls_key"):
        config_from_dict(_web_config(tmp_path, password_env="X", tls_cert="/x"))
    with pytest.raises(ConfigError, match=r"\[web\] allowed_hosts: 'http://camera3' is not a host name"):
        config_from_dict(_web_config(tmp_path, password_env="X", allowed_hosts=["http://camera3"]))
    with pytest.raises(ConfigError, match=r"\[web\] give metrics_token_env or metrics_token_file, not both"):
        config_from_dict(_web_config(tmp_path, password_env="X", metrics_token_env="Y", metrics_token_file="/y"))
    monkeypatch.setenv("EDGE_TEST_METRICS_TOKEN", "short")
    with pytest.raises(ConfigError, match=r"\[web\] metrics_token_env: the token is 5 characters"):
        config_from_dict(_web_config(tmp_path, password_env="X",
                                     metrics_token_env="EDGE_TEST_METRICS_TOKEN")).web.metrics_token()
    assert config_from_dict(_web_config(tmp_path, password_env="X")).web.metrics_token() is None
    named = config_from_dict(_web_config(tmp_path, password_env="X", allowed_hosts=["camera3.line1"]))
    assert named.web.allowed_hosts == ["camera3.line1"]
    with pytest.raises(ConfigError, match=r"\[web\] port"):
        config_from_dict(_web_config(tmp_path, password_env="X", port=70000))
    config = config_from_dict(_web_config(tmp_path, password_env=PASSWORD_ENV))
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ConfigError, match=rf"\[web\] password_env names {PASSWORD_ENV}, which is not set"):
        config.web.password()
    monkeypatch.setenv(PASSWORD_ENV, "short")
    with pytest.raises(ConfigError, match=r"\[web\] password_env: the password is 5 characters"):
        config.web.password()
    secret = tmp_path / "web-password"
    secret.write_text(PASSWORD + "\n")
    assert config_from_dict(_web_config(tmp_path, password_file=str(secret))).web.password() == PASSWORD


def test_a_taken_port_is_a_config_error_that_names_it(tmp_path: Path, monkeypatch) -> None:
    from edge_agent.cli import make_sink

    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    taken = WebSink(PASSWORD, port=0)
    try:
        config = config_from_dict(_web_config(tmp_path, password_env=PASSWORD_ENV, port=urlsplit(taken.url).port))
        with pytest.raises(ConfigError, match=r"\[web\] 127.0.0.1:\d+: .*set \[web\] port or bind"):
            make_sink(config)
    finally:
        taken.stop()


def test_https_with_a_certificate_sets_a_secure_cookie(tmp_path: Path) -> None:
    import ssl
    import urllib.request

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    web = WebSink(PASSWORD, port=0, tls=(str(cert), str(key)))
    web.start()
    try:
        assert web.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        assert urllib.request.urlopen(web.url + "healthz", context=context, timeout=10).read() == b"ok\n"

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as reply:  # the 303 to the page, not followed
            opener.open(web.url + "login", data=f"password={PASSWORD}".encode(), timeout=10)
        assert reply.value.code == 303 and "Secure" in reply.value.headers["Set-Cookie"]
    finally:
        web.stop()


def test_demo_web_shows_the_page_in_one_command(tmp_path: Path) -> None:
    """``edge-agent demo --web``: the embedded data, the page on a free port, until Ctrl-C."""
    import os
    import re
    import signal
    import sys
    import urllib.request

    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_WEB_PASSWORD"}  # a random one is printed
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "demo", "--work", str(tmp_path), "--n-train", "3",
                             "--n-test", "3", "--web", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        banner = None
        deadline = time.monotonic() + 180
        while banner is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the demo ended before showing the page"
            banner = re.search(r"operator's page is on (\S+) \(password: (\S+)\)", line)
        assert banner, "no banner with the page's address"
        url, password = banner.groups()
        assert url.startswith("http://127.0.0.1:")  # loopback only

        def history() -> dict:
            request = urllib.request.Request(url + "api/history", headers={"Authorization": f"Bearer {password}"})
            return json.loads(urllib.request.urlopen(request, timeout=10).read())

        assert wait_until(lambda: history()["last"] > 6, 60)  # 6 cells, looping: the line runs on
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "AUROC" in out.splitlines()[-1]
        assert '"topic": "verdict"' not in out  # the page shows them instead
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_connection_whose_thread_cannot_start_gives_its_counts_back(monkeypatch) -> None:
    """``can't start new thread`` (a Pi out of memory) left the address's count and the slot taken: after
    `MAX_PER_ADDRESS` such failures the address was answered 503 for good."""
    web = WebSink(PASSWORD, port=0)
    web.start()
    try:
        server, start, failed = web._server, threading.Thread.start, []

        def start_or_fail(thread: threading.Thread) -> None:
            if getattr(thread, "_target", None) == server.process_request_thread and len(failed) <= MAX_PER_ADDRESS:
                failed.append(thread)
                raise RuntimeError("can't start new thread")
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", start_or_fail)
        url = urlsplit(web.url)
        for _ in range(MAX_PER_ADDRESS + 1):
            with socket.create_connection((url.hostname, url.port), timeout=5) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert conn.recv(1024) == b""  # closed unanswered: no thread to answer it
        assert len(failed) == MAX_PER_ADDRESS + 1
        assert _opens(url, "127.0.0.1")
    finally:
        web.stop()


def test_on_a_dual_stack_socket_each_ipv4_client_counts_as_its_own_address() -> None:
    """Bound to ``::``, IPv4 clients arrive as ``::ffff:a.b.c.d``; counted by /64 like other IPv6 addresses, they
    would all share one count, and one client holding 12 connections would lock every other IPv4 client out."""
    web = WebSink(PASSWORD, bind="::", port=0)
    web.start()
    url = urlsplit(f"http://127.0.0.1:{urlsplit(web.url).port}/")
    held = []
    try:
        for _ in range(MAX_PER_ADDRESS):
            held.append(socket.create_connection((url.hostname, url.port), timeout=5, source_address=("127.0.0.2", 0)))
        assert wait_until(lambda: not _opens(url, "127.0.0.2"), 5)  # that address is full
        assert _opens(url, "127.0.0.1")  # another IPv4 client is not
    finally:
        for conn in held:
            conn.close()
        web.stop()


def test_ipv6_clients_count_by_their_64_prefix() -> None:
    """One IPv6 host can use any number of addresses in its /64, so an address is no limit there; a CI machine's
    loopback has a single IPv6 address, so the grouping is checked on addresses, not on connections."""
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == address_key("192.0.2.7") != address_key("::ffff:192.0.2.8")
