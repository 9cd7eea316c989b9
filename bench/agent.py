"""The agent's own costs, with no TensorFlow in the process: per-frame stages, fit, broker independence,
steady-state memory and file descriptors, peak RSS.

    python -m bench.agent --images DIR --train DIR [--broker HOST:PORT] [--frames 5000]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import add_image_args, emit, load_images, open_fds, proc_status, timeit
from edge_agent.capture.base import Frame, FrameSource
from edge_agent.cli import build_agent
from edge_agent.config import Config, DeviceConfig, MqttConfig, SourceConfig, fit_settings
from edge_agent.deliver.recording import RecordingSink
from edge_agent.learn.fitting import fit_images
from edge_agent.system.memory import return_freed_memory


class MemorySource(FrameSource):
    """Decoded frames in a loop: measures the agent, not PNG decoding or a disk."""

    name = "memory"

    def __init__(self, images):
        self._cycle = itertools.cycle(images)
        self._n = 0

    def open(self) -> None:
        pass

    def read(self) -> Frame:
        self._n += 1
        return Frame(next(self._cycle), f"frame{self._n}")


def _config(state: Path, broker: str | None) -> Config:
    host, _, port = (broker or "127.0.0.1:1").partition(":")
    c = Config(device=DeviceConfig(id="bench", state_dir=str(state)), source=SourceConfig(kind="folder", path="."),
               mqtt=MqttConfig(enabled=True, host=host, port=int(port)))
    c.model.delegate, c.model.threads, c.trigger.max_fps = "cpu", 2, 10_000
    return c


def _agent(state: Path, broker: str | None, images, model: Path | None, detector: str | None):
    from edge_agent.cli import make_sink

    config = _config(state, broker)
    if detector:
        config.detector.name = detector
    if model is not None:
        config.model.path = str(model)
    publisher = RecordingSink(make_sink(config), keep=False)  # the MQTT publisher with its spool, timed
    agent = build_agent(config, sink=publisher, source=MemorySource(images))
    return agent, publisher, config


def main() -> None:
    p = argparse.ArgumentParser()
    add_image_args(p)
    p.add_argument("--broker", help="HOST:PORT of a running broker")
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--model", type=Path, help="model folder (default: the shipped one)")
    p.add_argument("--frame-size", type=int, help="deliver frames already at this size (a camera ISP's scaled stream)")
    p.add_argument("--detector", help="detector name (default: the configuration's default)")
    p.add_argument("--outage-at", type=int, help="start a local mosquitto, and stop it at this frame: frame rate "
                   "with the broker up against the rate while it is gone, in one run")
    args = p.parse_args()
    broker = None
    if args.outage_at:
        import shutil
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        args.broker = f"127.0.0.1:{port}"
    images, train = load_images(args)
    if args.frame_size:
        from edge_agent.capture.preprocess import resize_rgb

        images = [resize_rgb(im, (args.frame_size, args.frame_size)) for im in images]
    with tempfile.TemporaryDirectory() as tmp:
        agent, publisher, config = _agent(Path(tmp) / "state", args.broker, images, args.model, args.detector)
        ex = agent.extractor
        ex.embed_one(images[0])
        x = ex.model_input(images[0])
        invoke = timeit(lambda: ex.backend.run(x), 100)  # the bare model run, as embed_one times it

        # Fit: augment + embed + fit + calibrate, N=10, factor 10.
        settings = fit_settings(config)
        t0 = time.perf_counter()
        result = fit_images(ex.embed, train, settings)
        fit_s = time.perf_counter() - t0
        agent.store.save(result, settings, ex.manifest)
        agent._load_current()
        emit({"kind": "fit", "detector": settings.detector, "n": 10, "factor": settings.factor, "fit_s": round(fit_s, 3),
              "timings_s": result.timings, "invoke_median_ms": invoke["median_ms"],
              "budget_s": round(1.2 * 110 * invoke["median_ms"] / 1e3 + 1, 3)})
        del result
        return_freed_memory()  # as the agent does after a retrain

        # The real main loop (agent.run) over many frames: per-frame stages, fps, RSS and fd growth.
        stages = {k: [] for k in ("preprocess_ms", "invoke_ms", "outputs_ms", "score", "publish", "inspect", "loop")}
        marks = {}
        original = agent.inspect
        last = [None]

        def instrumented(frame):
            t0 = time.perf_counter()
            v = original(frame)
            t1 = time.perf_counter()
            n = agent.inspected
            if 100 <= n < 1100:
                for k in ("preprocess_ms", "invoke_ms", "outputs_ms", "score"):
                    stages[k].append(v["latency_ms"][k])
                stages["publish"].append(publisher.publish_ms[-1])
                stages["inspect"].append((t1 - t0) * 1e3)
                if last[0] is not None:
                    stages["loop"].append((t1 - last[0]) * 1e3)
            last[0] = t1
            if n in (500, args.frames, args.outage_at, (args.outage_at or 0) + 200):
                marks[n] = (proc_status("VmRSS"), open_fds(), t1)
            if broker is not None and n == args.outage_at:
                broker.terminate()
            return v

        agent.inspect = instrumented
        agent.run(max_frames=args.frames)
        med = {k: round(statistics.median(v), 3) for k, v in stages.items()}
        emit({"kind": "frame", "broker": bool(args.broker), "model": ex.manifest.name, "detector": settings.detector,
              "frame_px": int(images[0].shape[0]), "invoke_bare_median_ms": invoke["median_ms"],
              **{f"{k.removesuffix('_ms')}_median_ms": v for k, v in med.items()},
              "loop_over_invoke": round(med["loop"] / invoke["median_ms"], 3)})
        (rss0, fd0, t500), (rss1, fd1, t_end) = marks[500], marks[args.frames]
        if broker is not None:
            t_out, t_after = marks[args.outage_at][2], marks[args.outage_at + 200][2]
            up, down = publisher.publish_ms[500:args.outage_at], publisher.publish_ms[args.outage_at + 200:]
            emit({"kind": "outage", "fps_broker_up": round((args.outage_at - 500) / (t_out - t500), 1),
                  "fps_broker_gone": round((args.frames - args.outage_at - 200) / (t_end - t_after), 1),
                  "publish_up_median_ms": round(statistics.median(up), 3),
                  "publish_gone_median_ms": round(statistics.median(down), 3),
                  "spool_left": len(publisher.sinks[0].spool)})
            broker.wait(10)
        emit({"kind": "steady", "broker": bool(args.broker), "frames": args.frames,
              "fps_after_500": round((args.frames - 500) / (t_end - t500), 1),
              "rss_growth_mb": round((rss1 - rss0) / 1024, 2), "fd_growth": fd1 - fd0,
              "rss_mb": round(rss1 / 1024, 1), "peak_rss_mb": round(proc_status("VmHWM") / 1024, 1),
              "spool_left": len(publisher.sinks[0].spool)})


if __name__ == "__main__":
    main()
