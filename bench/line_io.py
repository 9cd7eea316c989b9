"""A trigger-to-output latency run (bench/gpio_latency.py, bench/modbus_latency.py): the options, a fitted agent
in trigger mode, and the verdict count. Apart from `bench.common` so that the other benchmarks do not load the
agent (its start-up time and memory would show in their figures)."""

from __future__ import annotations

from bench.common import N_TRAIN  # first: the agent's thread limits

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.cli import build_agent  # noqa: E402
from edge_agent.config import config_from_dict  # noqa: E402
from edge_agent.deliver.sink import leaves  # noqa: E402


def add_line_args(p: argparse.ArgumentParser, events: str) -> None:
    """The options every trigger-to-output latency benchmark takes; ``events``: what one trigger is called."""
    p.add_argument("--images", type=Path, required=True, help="frames to judge (looped)")
    p.add_argument("--train", type=Path, required=True, help="good images; the first 10 are fitted on")
    p.add_argument("--triggers", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3, help=f"{events} not counted (first calls allocate)")
    p.add_argument("--detector", help="detector name (default: the configuration's default)")
    p.add_argument("--model", type=Path, help="model folder (default: the shipped one)")


def start_fitted_agent(args: argparse.Namespace, name: str, sections: dict) -> tuple[Agent, io.StringIO,
                                                                                        threading.Thread]:
    """An agent in trigger mode on ``args.images`` (looped), no broker, fitted on ``args.train`` and running on
    a thread; ``sections``: the config sections of the I/O under test. Its verdicts go to the returned stream
    (the stdout sink's JSON lines)."""
    data = {"device": {"id": "bench", "state_dir": tempfile.mkdtemp(prefix=f"{name}-")},
            "model": {"delegate": "cpu", "threads": 2, **({"path": str(args.model)} if args.model else {})},
            "source": {"kind": "folder", "path": str(args.images), "loop": True},
            "trigger": {"mode": "mqtt"}, "mqtt": {"enabled": False}, "retrain": {"n_images": N_TRAIN}, **sections}
    if args.detector:
        data["detector"] = {"name": args.detector}
    agent = build_agent(config_from_dict(data))
    out = leaves(agent.sink)[0].stream = io.StringIO()
    fitted = agent.request_retrain(folder=str(args.train))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    fitted.result(timeout=600)
    return agent, out, thread


def stop_and_count(agent: Agent, thread: threading.Thread, out: io.StringIO, args: argparse.Namespace,
                   events: str) -> list[float]:
    """Stop the agent, check it gave exactly one verdict per trigger, and return the embed + score times (ms,
    inside the agent) of the counted ones."""
    agent.stop()
    thread.join(30)
    verdicts = [m for m in map(json.loads, out.getvalue().splitlines()) if m["topic"] == "verdict"]
    if len(verdicts) != args.warmup + args.triggers:  # one verdict per trigger, no more
        raise SystemExit(f"{len(verdicts)} verdicts for {args.warmup + args.triggers} {events}")
    return [v["latency_ms"]["total"] for v in verdicts[args.warmup:]]
