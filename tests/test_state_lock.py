"""StateLock: one process per state folder. Real processes: a second one fails at once naming the holder's pid,
and the folder is free again the moment the holder is SIGKILLed (the kernel drops the flock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from edge_agent.system.lock import LOCK_NAME, StateLock, StateLocked

# Takes the folder, reports its pid, then holds it until killed. argv: state_dir [spawn a child that keeps fds]
HOLDER = textwrap.dedent("""
    import subprocess, sys, time
    from edge_agent.system.lock import StateLock
    lock = StateLock(sys.argv[1], "edge-agent run").acquire()
    if len(sys.argv) > 2:
        child = subprocess.Popen(["sleep", "60"], close_fds=False)  # inherits every fd not marked close-on-exec
        print(child.pid, flush=True)
    print("held", flush=True)
    time.sleep(120)
""")

# Tries to take the folder once, as `edge-agent run` would; prints how long that took.
CONTENDER = textwrap.dedent("""
    import sys, time
    from edge_agent.system.lock import StateLock, StateLocked
    start = time.monotonic()
    try:
        with StateLock(sys.argv[1], "edge-agent fit"):
            print(f"acquired {time.monotonic() - start:.3f}", flush=True)
    except StateLocked as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        print(f"refused {time.monotonic() - start:.3f}", flush=True)
        sys.exit(2)
""")


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


@pytest.fixture
def holder_of(tmp_path):
    """Start a holder on a folder and wait until it holds it; every holder started is killed at the end."""
    started: list[subprocess.Popen] = []

    def start(state_dir, *extra: str) -> tuple[subprocess.Popen, list[str]]:
        proc = subprocess.Popen(_python(HOLDER, str(state_dir), *extra), stdout=subprocess.PIPE, text=True)
        started.append(proc)
        lines = []
        while not lines or lines[-1] != "held":
            line = proc.stdout.readline()
            assert line, f"holder exited with {proc.wait()} before taking the lock"
            lines.append(line.strip())
        return proc, lines

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def _contend(state_dir) -> subprocess.CompletedProcess:
    return subprocess.run(_python(CONTENDER, str(state_dir)), capture_output=True, text=True, timeout=30)


def test_second_process_fails_fast_naming_the_holder(tmp_path, holder_of):
    state = tmp_path / "state"
    holder, _ = holder_of(state)
    second = _contend(state)
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.strip() == (
        f"edge-agent: error: state folder {state} is in use by process {holder.pid} (edge-agent run); "
        "stop it (systemctl stop edge-agent, or edge-agent@<name> for one of several cameras) or give another "
        "--state-dir"
    )
    assert float(second.stdout.split()[1]) < 1.0  # refused at once, not after waiting for the holder
    assert json.loads((state / LOCK_NAME).read_text()) == {"pid": holder.pid, "command": "edge-agent run"}


def test_after_sigkill_of_the_holder_a_new_process_takes_the_folder(tmp_path, holder_of):
    state = tmp_path / "state"
    holder, _ = holder_of(state)
    assert _contend(state).returncode == 2
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (state / LOCK_NAME).is_file()  # the stale pid is still written there: the flock is what counts
    after = _contend(state)
    assert after.returncode == 0, after.stderr
    assert after.stdout.startswith("acquired")


def test_a_program_the_holder_started_does_not_keep_the_folder(tmp_path, holder_of):
    state = tmp_path / "state"
    holder, lines = holder_of(state, "spawn")
    child = int(lines[0])
    try:
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the child outlives it
        assert _contend(state).returncode == 0
    finally:
        os.kill(child, signal.SIGKILL)  # not ours to wait for: init reaps the holder's orphan


def test_in_one_process_a_second_lock_is_refused_and_release_frees_it(tmp_path):
    state = tmp_path / "new" / "state"  # created when missing
    with StateLock(state, "edge-agent run") as first:
        assert first.held
        with pytest.raises(StateLocked, match=rf"in use by process {os.getpid()} \(edge-agent run\)"):
            StateLock(state).acquire()
    assert not first.held
    assert (state / LOCK_NAME).read_text() == ""  # no pid left behind for a message to name
    with StateLock(state) as again:
        assert again.acquire() is again  # acquiring what one holds is a no-op
    again.release()  # and releasing twice too


def test_unreadable_holder_still_gives_a_clear_message(tmp_path):
    state = tmp_path / "state"
    with StateLock(state):
        (state / LOCK_NAME).write_text("garbage")
        start = time.monotonic()
        with pytest.raises(StateLocked, match=rf"^state folder {state} is in use by another process; stop it"):
            StateLock(state).acquire()
        assert time.monotonic() - start < 1.0


def test_a_second_edge_agent_run_on_one_state_folder_exits_naming_the_first(tmp_path, shipped_model):
    """The reliability issue itself: `edge-agent run` by hand while the service runs on the same state folder."""
    (tmp_path / "frames").mkdir()
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[device]\nid = "cam-test"\nstate_dir = "{state}"\n'
                   f'[source]\nkind = "folder"\npath = "{tmp_path / "frames"}"\nwatch = true\n'
                   '[model]\ndelegate = "cpu"\n[mqtt]\nenabled = false\n')
    run = [sys.executable, "-m", "edge_agent.cli", "--config", str(cfg), "run"]
    first = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    second = None
    try:
        for line in first.stdout:  # the stdout sink: judging once it says it is online
            if '"topic": "availability"' in line:
                break
        else:
            raise RuntimeError(f"the first agent exited with {first.wait()} before going online")
        second = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = second.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            second.kill()
            out, err = second.communicate()
        # 1, not 2: the folder frees itself when the other process ends, so systemd may retry (2 stops retries)
        assert second.returncode == 1, f"the second agent ran beside the first:\n{out[-2000:]}"
        assert f"state folder {state} is in use by process {first.pid} (edge-agent run); stop it" in err, err
        assert '"availability"' not in out  # it never went online
        assert first.poll() is None  # and the first one is untouched
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        first.stdout.close()
