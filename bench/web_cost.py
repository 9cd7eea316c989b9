"""What the operator's web page costs the inspection loop: frames per second and RSS with the page off, and with it
on and two browsers watching the live view, on the same frames, in one run (docs/web.md, docs/performance.md).

    python -m bench.web_cost --images DIR --train DIR [--frames 400] [--rounds 2] [--max-fps 30]
        [--agent-cpus 0 --browser-cpus 1]

Each phase is a child process with a fresh agent (its RSS is its own; the browsers are other processes): the
shipped model on CPU with 2 threads, the default detector fitted on 10 good images, decoded frames in a loop
(`bench.agent.MemorySource`) judged as fast as the loop goes. Phases alternate (off, on, off, on...) so that a
load elsewhere on the machine weighs on both. In the "on" phase two headless Debian chromium browsers, driven by
Selenium through chromium-driver, are logged in to the page and receive the live view (4 frames per second each,
the default) and the score history before the measured frames start. They run on the same machine at nice 19,
standing in for phones and panel PCs that would run elsewhere; their own CPU time still competes with the loop,
so the figure is pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import add_image_args, emit, load_images, proc_status

PASSWORD_ENV = "EDGE_BENCH_WEB_PASSWORD"
WARMUP_S = 8.0  # after the fit (and the browsers' first frames), before the measured frames
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def child(args: argparse.Namespace) -> None:
    """One phase: fit, say READY (with the page's address), wait for "go", time the next ``--frames`` verdicts."""
    from bench.agent import MemorySource
    from edge_agent.cli import build_agent, web_sinks
    from edge_agent.config import Config, DeviceConfig, MqttConfig, SourceConfig, WebConfig
    from edge_agent.deliver.sink import FanOut, PartialSink, leaves
    from edge_agent.deliver.stdout import StdoutSink

    class Clock(PartialSink):
        def __init__(self) -> None:
            self.times: list[float] = []

        def publish_verdict(self, verdict):
            self.times.append(time.perf_counter())
            return verdict["seq"]

    if args.agent_cpus:
        os.sched_setaffinity(0, args.agent_cpus)  # before the interpreter's threads start: they inherit it
    frames, _ = load_images(args)
    state = tempfile.mkdtemp(prefix="web-cost-")
    config = Config(device=DeviceConfig(id="bench", state_dir=state), source=SourceConfig(kind="folder", path="."),
                    mqtt=MqttConfig(enabled=False))
    threads = len(args.agent_cpus) if args.agent_cpus else 2
    config.model.delegate, config.model.threads, config.trigger.max_fps = "cpu", threads, args.max_fps
    first, clock = StdoutSink(open(os.devnull, "w")), Clock()
    sinks = [first, clock]
    if args.child == "on":
        config.web = WebConfig(enabled=True, port=0, password_env=PASSWORD_ENV)
        sinks += web_sinks(config, first)
    agent = build_agent(config, sink=FanOut(sinks), source=MemorySource(frames))
    agent.request_retrain(n_images=10, folder=str(args.train))
    loop = threading.Thread(target=agent.run, daemon=True)
    loop.start()
    while agent.state()["status"] != "running" or not clock.times:
        time.sleep(0.1)
    url = next((leaf.url for leaf in leaves(agent.sink) if hasattr(leaf, "url")), "-")
    rss_ready = proc_status("VmRSS")
    print(f"READY {url}", flush=True)
    sys.stdin.readline()  # "go": the browsers watch (on), or the same warm-up went by (off)
    start, rss0, cpu0 = len(clock.times), proc_status("VmRSS"), time.process_time()
    while len(clock.times) < start + args.frames:
        time.sleep(0.05)
    times = clock.times[start:start + args.frames]
    rss, cpu = proc_status("VmRSS"), time.process_time() - cpu0
    agent.stop()
    loop.join(30)
    emit({"phase": args.child, "fps": round((len(times) - 1) / (times[-1] - times[0]), 2),
          "cpu_ms_per_frame": round(cpu * 1e3 / len(times), 2),
          "rss_mb": round(rss / 1024, 1), "rss_ready_mb": round(rss_ready / 1024, 1),
          "rss_go_mb": round(rss0 / 1024, 1), "rss_growth_during_mb": round((rss - rss0) / 1024, 1),
          "peak_rss_mb": round(proc_status("VmHWM") / 1024, 1), "frames": len(times)})


def _browser(profile: Path, wrapper: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(wrapper)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _watch(driver, url: str, password: str) -> None:
    """Log in and wait until the live view shows frames."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "login")
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 60, 0.1).until(
        lambda d: d.execute_script("const i = document.getElementById('live'); return i && i.naturalWidth > 0 && "
                                   "Number(i.dataset.frame) > 1"), "the live view")


def phase(mode: str, args: argparse.Namespace, work: Path) -> dict:
    env = {**os.environ, PASSWORD_ENV: "bench-web-password"}
    command = [sys.executable, "-m", "bench.web_cost", "--child", mode, "--images", str(args.images),
               "--train", str(args.train), "--frames", str(args.frames), "--max-fps", str(args.max_fps)]
    if args.agent_cpus:
        command += ["--agent-cpus", ",".join(map(str, sorted(args.agent_cpus)))]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    browsers = []
    try:
        line = ""
        while not line.startswith("READY"):
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the {mode} phase ended before it was ready")
        url = line.split()[1]
        if mode == "on":
            wrapper = work / "chromium-nice"
            pin = f"taskset -c {','.join(map(str, sorted(args.browser_cpus)))} " if args.browser_cpus else ""
            wrapper.write_text(f'#!/bin/sh\nexec {pin}nice -n 19 {CHROMIUM} "$@"\n')
            wrapper.chmod(0o755)
            for i in range(2):
                browsers.append(_browser(Path(tempfile.mkdtemp(prefix=f"chromium{i}-", dir=work)), wrapper))
                _watch(browsers[-1], url, env[PASSWORD_ENV])
        time.sleep(WARMUP_S)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if line.startswith("BENCH "):
                result = json.loads(line[len("BENCH "):])
                if browsers:  # the browsers still watched at the end of the measured frames
                    result["browser_frames"] = [int(b.execute_script("return document.getElementById('live')"
                                                                     ".dataset.frame")) for b in browsers]
                return result
        raise RuntimeError(f"the {mode} phase gave no result")
    finally:
        for b in browsers:
            b.quit()
        proc.wait(60)


def _cpus(text: str) -> set[int]:
    return {int(c) for c in text.split(",")}


def main() -> None:
    p = argparse.ArgumentParser()
    add_image_args(p)
    p.add_argument("--frames", type=int, default=400, help="measured frames per phase")
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    p.add_argument("--max-fps", type=float, default=10_000, help="[trigger] max_fps (default: as fast as it goes; "
                   "a camera's own rate shows the page's cost as CPU time with the frame rate held)")
    p.add_argument("--agent-cpus", type=_cpus, help="CPUs the agent runs on, e.g. 0 (its interpreter gets one "
                   "thread per CPU); with --browser-cpus the browsers stay off them, as on a line where they are "
                   "phones and panel PCs, and what remains is the page's own cost")
    p.add_argument("--browser-cpus", type=_cpus, help="CPUs the browsers run on, e.g. 1")
    p.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    results: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="web-cost-") as work:
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                results[mode].append(phase(mode, args, Path(work)))
                emit(results[mode][-1])
    fps = {m: statistics.median(r["fps"] for r in results[m]) for m in results}
    rss = {m: statistics.median(r["rss_mb"] for r in results[m]) for m in results}
    cpu = {m: statistics.median(r["cpu_ms_per_frame"] for r in results[m]) for m in results}
    summary = {"fps_off": fps["off"], "fps_on": fps["on"], "fps_drop_pct": round(100 * (1 - fps["on"] / fps["off"]), 1),
               "cpu_ms_per_frame_off": cpu["off"], "cpu_ms_per_frame_on": cpu["on"],
               "rss_off_mb": rss["off"], "rss_on_mb": rss["on"], "rss_growth_mb": round(rss["on"] - rss["off"], 1),
               "rounds": args.rounds, "frames": args.frames}
    summary["max_fps"] = args.max_fps
    summary["agent_cpus"] = sorted(args.agent_cpus) if args.agent_cpus else None
    summary["browser_cpus"] = sorted(args.browser_cpus) if args.browser_cpus else None
    emit(summary)
    print(f"\n| page | fps (median of {args.rounds}) | agent CPU ms per frame | RSS MB |\n|---|---|---|---|\n"
          f"| off | {fps['off']:.2f} | {cpu['off']:.2f} | {rss['off']:.1f} |\n"
          f"| on, two browsers watching | {fps['on']:.2f} | {cpu['on']:.2f} | {rss['on']:.1f} |\n\n"
          f"fps {summary['fps_drop_pct']:.1f} % lower, RSS {summary['rss_growth_mb']:+.1f} MB")


if __name__ == "__main__":
    main()
