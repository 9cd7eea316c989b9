"""Deployment: units verify, calendars parse, install is exact and idempotent, notify/watchdog, timer path."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.mqtt_broker import MosquittoBroker

SYSTEMD = ROOT / "systemd"
UNITS = ("edge-agent.service", "edge-agent@.service", "edge-agent-retrain.service", "edge-agent-retrain.timer")
AGENT_BIN = Path(sys.executable).parent / "edge-agent"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install systemd)")
    return path


def _install(root: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["bash", str(SYSTEMD / "install.sh"), "--root", str(root), "--no-pip", *extra],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file outside the venv's own Python tree, with its content hash and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith("opt/edge-agent/venv/"):
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


EXPECTED = {
    "opt/edge-agent/constraints.txt", "etc/edge-agent/config.toml", "etc/edge-agent/edge-agent.env",
    "etc/systemd/system/edge-agent.service", "etc/systemd/system/edge-agent@.service",
    "etc/systemd/system/edge-agent-retrain.service",
    "etc/systemd/system/edge-agent-retrain.timer", "etc/udev/rules.d/60-edge-agent-coral.rules",
}


def test_install_lays_out_exactly_the_expected_files_and_is_idempotent(tmp_path):
    root = tmp_path / "root"
    first = _install(root)
    assert "wrote" in first
    tree = _tree(root)
    assert set(tree) == EXPECTED
    assert (root / "opt/edge-agent/venv/bin/python").exists()
    assert "include-system-site-packages = true" in (root / "opt/edge-agent/venv/pyvenv.cfg").read_text()
    assert oct((root / "etc/edge-agent/edge-agent.env").stat().st_mode & 0o777) == "0o640"
    for unit in UNITS:
        assert (root / "etc/systemd/system" / unit).read_bytes() == (SYSTEMD / unit).read_bytes()
    (root / "etc/edge-agent/config.toml").write_text("# the operator's own settings\n")
    second = _install(root)
    assert "wrote" not in second and "created" not in second
    after = _tree(root)
    assert {k: v for k, v in after.items() if k != "etc/edge-agent/config.toml"} == \
           {k: v for k, v in tree.items() if k != "etc/edge-agent/config.toml"}
    assert (root / "etc/edge-agent/config.toml").read_text() == "# the operator's own settings\n"


def _fake_system_numpy(tmp_path: Path, version: str | None) -> dict[str, str]:
    """An environment whose python3 imports a stand-in numpy of ``version`` (None: ``import numpy`` fails)."""
    site = tmp_path / f"site-{version}"
    (site / "numpy").mkdir(parents=True, exist_ok=True)
    body = f"__version__ = {version!r}\n" if version else "raise ImportError('no numpy here')\n"
    (site / "numpy" / "__init__.py").write_text(body)
    return {**os.environ, "PYTHONPATH": str(site)}


def _constraints(root: Path) -> list[str]:
    text = (root / "opt/edge-agent/constraints.txt").read_text()
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_constraints_pin_the_system_numpy_and_an_opencv_that_accepts_it(tmp_path):
    """The rule that keeps apt's camera stack working: pip may not replace the numpy the system python3 imports
    (Debian's 1.24.2 on Raspberry Pi OS Bookworm), and with a numpy 1.x OpenCV stays below 4.12 (the first
    opencv-python-headless that requires numpy>=2). A numpy 2 system (Trixie) keeps OpenCV free; no system
    numpy, no pins. Rewritten when the system's numpy changes, untouched otherwise."""
    root = tmp_path / "root"
    out = _install(root, env=_fake_system_numpy(tmp_path, "1.24.2"))
    assert _constraints(root) == ["numpy==1.24.2", "opencv-python-headless<4.12"]
    assert "constraints.txt" in out
    again = _install(root, env=_fake_system_numpy(tmp_path, "1.24.2"))
    assert "wrote" not in again
    _install(root, env=_fake_system_numpy(tmp_path, "2.2.4"))
    assert _constraints(root) == ["numpy==2.2.4"]
    _install(root, env=_fake_system_numpy(tmp_path, None))
    assert _constraints(root) == []
    assert "imports no numpy" in (root / "opt/edge-agent/constraints.txt").read_text()


def test_pi_extra_does_not_pull_picamera2_from_pypi():
    """picamera2 comes from apt (install.sh); the PyPI one drags its own numpy/simplejpeg builds in."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any("picamera2" in req for req in project["optional-dependencies"].get("pi", []))


def test_uninstall_keeps_config_and_state_unless_purged(tmp_path):
    root = tmp_path / "root"
    _install(root)
    for state in ("edge-agent", "edge-agent-cam1"):  # the single unit's, an edge-agent@cam1 instance's
        (root / "var/lib" / state / "detectors").mkdir(parents=True)
        (root / "var/lib" / state / "detectors/current.json").write_text("{}")
    _install(root, "--uninstall")
    assert set(_tree(root)) == {"etc/edge-agent/config.toml", "etc/edge-agent/edge-agent.env",
                                "var/lib/edge-agent/detectors/current.json",
                                "var/lib/edge-agent-cam1/detectors/current.json"}
    assert not (root / "opt/edge-agent").exists()
    _install(root, "--uninstall", "--purge")
    assert _tree(root) == {}


def test_example_config_is_valid():
    from edge_agent.config import load_config

    config = load_config(SYSTEMD / "config.example.toml")
    assert config.source.kind == "picamera2" and config.mqtt.password_env == "EDGE_AGENT_MQTT_PASSWORD"


def test_systemd_analyze_verify_accepts_every_unit(tmp_path):
    """Verified as installed: ExecStart must exist, so /opt/edge-agent is bind-mounted from a test root in a
    private mount namespace (nothing outside the test changes)."""
    analyze = _need("systemd-analyze")
    root = tmp_path / "root"
    _install(root)
    (root / "opt/edge-agent/venv/bin/edge-agent").symlink_to(AGENT_BIN)
    units = " ".join(str(root / "etc/systemd/system" / u) for u in UNITS)
    script = f"mkdir -p /opt/edge-agent && mount --bind {root}/opt/edge-agent /opt/edge-agent && {analyze} verify {units}"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    if "Operation not permitted" in proc.stderr and "mount" in proc.stderr:
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr


def _settings(unit: str) -> list[tuple[str, str]]:
    """(section, line) for every setting of a unit file, in order; comments and blank lines left out."""
    section, out = "", []
    for line in (SYSTEMD / unit).read_text().splitlines():
        if line.startswith("["):
            section = line
        elif line.strip() and not line.startswith("#"):
            out.append((section, line))
    return out


#: What an instance of edge-agent@.service sets differently from edge-agent.service; everything else (the
#: hardening, the watchdog, the restart policy) must stay the same in both.
PER_INSTANCE = {
    "Description=Edge visual-inspection agent": ["Description=Edge visual-inspection agent (%i)"],
    "EnvironmentFile=-/etc/edge-agent/edge-agent.env": ["EnvironmentFile=-/etc/edge-agent/edge-agent.env",
                                                        "EnvironmentFile=-/etc/edge-agent/%i.env"],
    "ExecStart=/opt/edge-agent/venv/bin/edge-agent --config /etc/edge-agent/config.toml run":
        ["ExecStart=/opt/edge-agent/venv/bin/edge-agent --config /etc/edge-agent/%i.toml --state-dir "
         "${STATE_DIRECTORY} run"],
    "StateDirectory=edge-agent": ["StateDirectory=edge-agent-%i"],
}


def test_the_per_camera_template_keeps_every_other_setting_of_the_single_unit():
    """Copy-paste drift: a hardening line added to one unit and not the other fails here."""
    expected = [(section, variant) for section, line in _settings("edge-agent.service")
                for variant in PER_INSTANCE.get(line, [line])]
    assert _settings("edge-agent@.service") == expected
    assert "ProtectSystem=strict" in (SYSTEMD / "edge-agent@.service").read_text()  # the parse found the lines


def test_an_instance_state_folder_is_never_inside_the_single_units():
    """With ``edge-agent/%i``, an instance named ``detectors`` kept its state in the single agent's detector store,
    and an instance's lock was in another folder than the single agent's, so nothing kept both on one state."""
    def state_directory(unit: str) -> Path:
        return Path("/var/lib", next(line.split("=", 1)[1] for _, line in _settings(unit)
                                     if line.startswith("StateDirectory=")))

    single = state_directory("edge-agent.service")
    for name in ("detectors", "spool", "cam1"):
        instance = Path(str(state_directory("edge-agent@.service")).replace("%i", name))
        assert not instance.is_relative_to(single) and instance != single, instance


def test_two_cameras_run_side_by_side_from_the_template(tmp_path, real_set):
    """The template's ExecStart (paths mapped to this test) for two instances: each its config, state folder and
    web port; both run at once; a second start of one instance is refused by its state lock (exit 1)."""
    exec_start = next(line.split("=", 1)[1] for _, line in _settings("edge-agent@.service")
                      if line.startswith("ExecStart="))
    etc = tmp_path / "etc"
    etc.mkdir()

    def argv(name: str) -> list[str]:
        line = exec_start.replace("%i", name).replace("${STATE_DIRECTORY}", str(tmp_path / "state" / name))
        return [str(AGENT_BIN) if a == "/opt/edge-agent/venv/bin/edge-agent" else
                a.replace("/etc/edge-agent/", f"{etc}/") for a in shlex.split(line)]

    procs = []
    env = {**os.environ, "EDGE_TEST_WEB_PASSWORD": "a password for both"}
    try:
        for name in ("cam1", "cam2"):
            frames = tmp_path / f"frames-{name}"
            frames.mkdir()
            (frames / real_set.test_good[0].name).write_bytes(real_set.test_good[0].read_bytes())
            (etc / f"{name}.toml").write_text(
                f'[device]\nid = "line1-{name}"\n[model]\ndelegate = "cpu"\n'
                f'[source]\nkind = "folder"\npath = "{frames}"\nwatch = true\n[mqtt]\nenabled = false\n'
                f'[web]\nenabled = true\nport = 0\npassword_env = "EDGE_TEST_WEB_PASSWORD"\n')
            procs.append(subprocess.Popen(argv(name), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True))
        states = [tmp_path / "state" / name / "state.json" for name in ("cam1", "cam2")]
        assert _wait(lambda: all(s.exists() for s in states), 120), [p.poll() for p in procs]
        assert [json.loads(s.read_text())["device"] for s in states] == ["line1-cam1", "line1-cam2"]
        assert all(p.poll() is None for p in procs)
        twin = subprocess.run(argv("cam1"), env=env, capture_output=True, text=True, timeout=120)
        assert twin.returncode == 1 and "is in use by process" in twin.stderr, twin.stderr
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def test_verify_catches_a_broken_unit(tmp_path):
    analyze = _need("systemd-analyze")
    bad = tmp_path / "edge-agent-broken.service"
    bad.write_text((SYSTEMD / "edge-agent.service").read_text().replace("Type=notify", "Type=notifyy"))
    proc = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in proc.stderr


def test_timer_calendars_parse():
    analyze = _need("systemd-analyze")
    lines = [ln.split("=", 1)[1] for ln in (SYSTEMD / "edge-agent-retrain.timer").read_text().splitlines()
             if ln.startswith("OnCalendar=")]
    assert len(lines) == 3
    for expr in lines:
        proc = subprocess.run([analyze, "calendar", expr], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and "Next elapse" in proc.stdout, proc.stderr
    assert "Persistent=true" in (SYSTEMD / "edge-agent-retrain.timer").read_text()


# ---- sd_notify and the watchdog ----------------------------------------------------------------------------

class _NotifySocket:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for t, m in self.messages if m == "WATCHDOG=1" and start <= t <= end)

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _agent_config(tmp_path: Path, broker: MosquittoBroker | None, frames: Path) -> Path:
    frames.mkdir(parents=True, exist_ok=True)
    mqtt = (f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n' if broker else "[mqtt]\nenabled = false\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[device]\nid = "cam-test"\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[source]\nkind = "folder"\npath = "{frames}"\nwatch = true\n'
                   f'[model]\ndelegate = "cpu"\n[augmentation]\nfactor = 2\n[retrain]\nn_images = 3\ntimeout_s = 60\n'
                   + mqtt)
    return cfg


def _copy(images: list[Path], dst: Path, prefix: str = "") -> None:
    for p in images:
        tmp = dst / f".{prefix}{p.name}.part"
        tmp.write_bytes(p.read_bytes())
        tmp.rename(dst / f"{prefix}{p.name}")  # appear whole, as a line PC should drop files


def test_agent_sends_ready_then_watchdog_pings(tmp_path):
    notify = _NotifySocket(tmp_path / "notify.sock")
    cfg = _agent_config(tmp_path, None, tmp_path / "frames")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen([str(AGENT_BIN), "--config", str(cfg), "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: any(m.startswith("READY=1") for _, m in notify.messages)), proc.stderr
        t0 = time.monotonic()
        time.sleep(2.0)
        assert notify.pings_between(t0, time.monotonic()) >= 5  # every 0.2 s while idle on a watched folder
    finally:
        proc.terminate()
        proc.wait(20)
        notify.close()
    assert any(m == "STOPPING=1" for _, m in notify.messages)


def test_watchdog_pings_stop_while_the_main_loop_is_stuck(tmp_path, shipped_model, monkeypatch, real_set):
    """A camera read that hangs (a stand-in source whose read blocks) must starve the watchdog."""
    from edge_agent.cli import build_agent
    from edge_agent.config import load_config
    from edge_agent.capture.images import read_image
    from edge_agent.deliver.stdout import StdoutSink
    from edge_agent.capture.base import Frame, FrameSource

    class HangingSource(FrameSource):
        name = "hanging"

        def __init__(self):
            self.release = threading.Event()
            self.hang = threading.Event()
            self.hanging = threading.Event()  # set by the loop's own thread once it is inside the hanging read
            self.reads = 0
            self.image = read_image(real_set.test_good[0])

        def open(self):
            pass

        def read(self):
            self.reads += 1
            if self.hang.is_set():
                self.hanging.set()
                self.release.wait(30)
                self.hang.clear()
                self.hanging.clear()
            time.sleep(0.05)
            return Frame(self.image, "frame")

    notify = _NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    config = load_config(_agent_config(tmp_path, None, tmp_path / "frames"))
    source = HangingSource()
    agent = build_agent(config, sink=StdoutSink(open(os.devnull, "w")), source=source)
    good = tmp_path / "good"
    good.mkdir()
    _copy(real_set.train_good[:3], good)
    agent.request_retrain(folder=str(good))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert _wait(lambda: agent.fitted and agent.inspected > 3)
        t0 = time.monotonic()
        time.sleep(1.0)
        assert notify.pings_between(t0, time.monotonic()) >= 3
        source.hang.set()
        assert source.hanging.wait(10)  # the loop is inside the hanging read: it was alive up to here
        time.sleep(0.3)  # a ping sent just before the read may still be on its way to the socket's reader thread
        t1 = time.monotonic()
        time.sleep(1.5)
        # Silence while stuck, and proof that the silence is the hang's: the loop's thread is still there and
        # still inside that same read, and the notify socket still hears the agent once the read returns.
        assert notify.pings_between(t1, time.monotonic()) == 0
        assert thread.is_alive() and source.hanging.is_set()
        reads_when_stuck = source.reads
        source.release.set()
        t2 = time.monotonic()
        assert _wait(lambda: notify.pings_between(t2, time.monotonic()) >= 2, timeout=10)
        assert _wait(lambda: source.reads > reads_when_stuck, timeout=10)
    finally:
        agent.stop()
        source.release.set()
        thread.join(20)
        notify.close()


def test_retrain_service_command_reaches_the_running_agent(tmp_path, real_set):
    """The timer's unit runs edge-agent retrain: run its ExecStart (paths mapped to this checkout) against a live
    agent and broker; the agent retrains on the next good frames and the command exits 0."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    frames = tmp_path / "frames"
    cfg = _agent_config(tmp_path, broker, frames)
    agent = subprocess.Popen([str(AGENT_BIN), "--config", str(cfg), "run"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: (tmp_path / "state" / "state.json").exists())
        exec_start = next(ln.split("=", 1)[1] for ln in (SYSTEMD / "edge-agent-retrain.service").read_text().splitlines()
                          if ln.startswith("ExecStart="))
        argv = [str(AGENT_BIN) if a == "/opt/edge-agent/venv/bin/edge-agent" else
                str(cfg) if a == "/etc/edge-agent/config.toml" else a for a in shlex.split(exec_start)]
        assert argv[-1] == "retrain"
        service = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # the agent is now collecting: show it three good parts
        _copy(real_set.train_good[:3], frames)
        out, err = service.communicate(timeout=90)
        assert service.returncode == 0, err
        assert '"ok": true' in out and '"n_train": 3' in out
        assert _wait(lambda: '"status": "running"' in (tmp_path / "state" / "state.json").read_text())
    finally:
        agent.terminate()
        agent.wait(20)
        broker.stop()
