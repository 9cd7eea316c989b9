"""Log lines in the journal's format when stderr is the journal (``JOURNAL_STREAM``): the real CLI as a subprocess
with stderr to a file whose device:inode the test puts in ``JOURNAL_STREAM``, as systemd does for its stream."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mqtt_broker import wait_until
from tests.web_rig import PASSWORD, PASSWORD_ENV

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _stderr_of(args: list[str], folder: Path, journal: str | None, stop_after: str | None = None
               ) -> tuple[int, list[str]]:
    """Runs ``args`` with stderr to a file; ``journal``: "match" (JOURNAL_STREAM names that file), "other" (it
    names another file, as a child of a service whose stderr was redirected), None (not set). ``stop_after``: a
    text; once it is on stderr the program is stopped as systemd does (SIGTERM)."""
    path, other = folder / "stderr", folder / "other"
    other.touch()
    with path.open("wb") as err:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        env[PASSWORD_ENV] = PASSWORD
        if journal:
            stat = os.fstat(err.fileno()) if journal == "match" else other.stat()
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        proc = subprocess.Popen(args, stderr=err, stdout=subprocess.DEVNULL, env=env)
        try:
            if stop_after is not None:
                assert wait_until(lambda: stop_after in path.read_text() or proc.poll() is not None, 120)
                proc.send_signal(signal.SIGTERM)
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, path.read_text().splitlines()


def _ours(lines: list[str]) -> list[str]:
    """The agent's lines, without what native libraries write to stderr themselves (TFLite's delegate notice)."""
    return [line for line in lines if "TensorFlow Lite" not in line]


@pytest.fixture
def run_config(tmp_path: Path, real_set) -> Path:
    """``edge-agent run`` on a real image, unfitted (a warning), with the web page on every address and no TLS (a
    second warning), until SIGTERM."""
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(real_set.test_good[0], frames)
    config = tmp_path / "edge-agent.toml"
    config.write_text(f"""
[device]
state_dir = "{tmp_path / 'state'}"
[model]
delegate = "cpu"
[source]
kind = "folder"
path = "{frames}"
[mqtt]
enabled = false
[web]
enabled = true
bind = "0.0.0.0"
port = 0
password_env = "{PASSWORD_ENV}"
""")
    return config


def test_journal_lines_carry_the_syslog_level_and_no_timestamp(tmp_path: Path, run_config: Path) -> None:
    cli = [sys.executable, "-m", "edge_agent.cli", "--config", str(run_config), "run"]
    rc, lines = _stderr_of(cli, tmp_path, "match", stop_after="clear text")
    assert rc == 0, lines
    lines = _ours(lines)
    warnings = [line for line in lines if "clear text" in line]
    assert len(warnings) == 1 and warnings[0].startswith("<4>WARNING edge_agent.deliver.web: "), lines
    assert any(line.startswith("<4>WARNING edge_agent.agent: no fitted detector") for line in lines), lines
    assert any(line.startswith("<6>INFO ") for line in lines), lines
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines  # every line files under a level
    assert not any(TIMESTAMP.search(line) for line in lines), lines  # journald stamps the time itself

    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nhots = 'x'\n")
    rc, lines = _stderr_of([sys.executable, "-m", "edge_agent.cli", "--config", str(bad), "status"], tmp_path,
                           "match")
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("<3>edge-agent: error: ") and "[mqtt] hots" in lines[0]


def test_every_line_of_a_cli_error_carries_the_level(tmp_path: Path) -> None:
    """A key with a newline in it (a quoted TOML key) makes the error name it over two lines; the second line
    without the prefix was filed as info."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\n"ho\\nts" = "x"\n')
    rc, lines = _stderr_of([sys.executable, "-m", "edge_agent.cli", "--config", str(bad), "status"], tmp_path,
                           "match")
    assert rc == 2 and len(lines) == 2 and lines[0].startswith("<3>edge-agent: error: "), lines
    assert lines[1].startswith("<3>ts (did you mean host?)"), lines


def test_a_nul_byte_does_not_split_a_journal_line(tmp_path: Path) -> None:
    """journald ends a line at NUL as at a newline: the text after it became an entry of its own, filed as info."""
    script = ("import logging\n"
              "from edge_agent.system.journal import setup_logging\n"
              "setup_logging(logging.INFO)\n"
              "logging.getLogger('edge_agent').error('file a\\0b')\n")
    rc, lines = _stderr_of([sys.executable, "-c", script], tmp_path, "match")
    assert rc == 0 and lines == ["<3>ERROR edge_agent: file a\\0b"], lines


def test_a_thread_ending_with_system_exit_logs_nothing(tmp_path: Path) -> None:
    """Python's own thread hook ignores SystemExit (``sys.exit()`` in a thread ends it on purpose); the journal's
    hook logged it as a critical uncaught exception. Another exception in a thread is still logged."""
    script = ("import logging, sys, threading\n"
              "from edge_agent.system.journal import setup_logging\n"
              "setup_logging(logging.INFO)\n"
              "for target in (sys.exit, lambda: 1 / 0):\n"
              "    t = threading.Thread(target=target, name='worker')\n"
              "    t.start()\n"
              "    t.join()\n")
    rc, lines = _stderr_of([sys.executable, "-c", script], tmp_path, "match")
    assert rc == 0, lines
    assert lines[0] == "<2>CRITICAL edge_agent: uncaught exception on worker" and lines[-1].startswith(
        "<2>ZeroDivisionError"), lines
    assert not any("SystemExit" in line for line in lines), lines


@pytest.mark.parametrize("journal", [None, "other"])
def test_off_the_journal_lines_keep_their_time_and_no_prefix(tmp_path: Path, run_config: Path, journal) -> None:
    """No JOURNAL_STREAM, or one that names another stream than stderr (inherited, stderr redirected)."""
    rc, lines = _stderr_of([sys.executable, "-m", "edge_agent.cli", "--config", str(run_config), "run"], tmp_path,
                           journal, stop_after="clear text")
    assert rc == 0, lines
    lines = _ours(lines)
    warning = next(line for line in lines if "clear text" in line)
    assert TIMESTAMP.match(warning) and " WARNING edge_agent.deliver.web: " in warning, lines
    assert not any(re.match(r"<\d>", line) for line in lines), lines


def test_every_line_of_a_traceback_carries_the_level(tmp_path: Path) -> None:
    """journald makes one entry per line: a traceback's continuation lines keep the record's level. A logged
    exception and an uncaught one (logged as critical through the hook the journal mode installs)."""
    script = ("import logging\n"
              "from edge_agent.system.journal import setup_logging\n"
              "setup_logging(logging.INFO)\n"
              "try:\n    1 / 0\nexcept ZeroDivisionError:\n"
              "    logging.getLogger('edge_agent').exception('failed\\nover two lines')\n"
              "raise ValueError('uncaught')\n")
    rc, lines = _stderr_of([sys.executable, "-c", script], tmp_path, "match")
    assert rc == 1
    logged = [line for line in lines if line.startswith("<3>")]
    assert logged[0] == "<3>ERROR edge_agent: failed" and "<3>over two lines" in logged
    assert "<3>Traceback (most recent call last):" in logged and "<3>ZeroDivisionError: division by zero" in logged
    uncaught = [line for line in lines if line.startswith("<2>")]
    assert uncaught[0] == "<2>CRITICAL edge_agent: uncaught exception on the main thread"
    assert uncaught[-1] == "<2>ValueError: uncaught"
    assert len(logged) + len(uncaught) == len(lines), lines
