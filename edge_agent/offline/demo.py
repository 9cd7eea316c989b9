"""``edge-agent demo``: the agent's real job on a fresh machine, with no camera and no broker.

Solar cells from the ``elpv-dataset`` PyPI package stand in for a production line: the agent retrains from
N good cells (as at shift start), then inspects a folder of unseen good and defective cells through its
normal source -> embed -> score -> publish path, verdicts as JSON lines on stdout. The summary compares
its verdicts with the data set's labels, which the agent never sees.

With ``--web`` the same line runs on, in a loop at a visible pace, until Ctrl-C, and the operator's web page shows
it (its verdicts there instead of on stdout): a new user sees the page in one command.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from edge_agent.config import Config, DeviceConfig, MqttConfig, SourceConfig, WebConfig
from edge_agent.offline.datasets import link_or_copy, load_mvtec, write_elpv
from edge_agent.offline.metrics import roc_auc
from edge_agent.deliver.recording import RecordingSink
from edge_agent.deliver.sink import leaves
from edge_agent.deliver.stdout import StdoutSink

log = logging.getLogger(__name__)

#: The web page's password in the demo: this variable's value when set, else a random one, printed.
DEMO_PASSWORD_ENV = "EDGE_AGENT_WEB_PASSWORD"
#: Parts per second on the demo's line with the web page: slow enough to watch.
WEB_DEMO_FPS = 2.0


def run_demo(work: Path, n_train: int = 10, n_test: int = 40, cell_type: str = "mono", broker: str | None = None,
             web_port: int | None = None) -> int:
    """With ``broker`` (HOST:PORT) the verdicts also go to MQTT under edge-inspect/demo-camera/. With ``web_port``
    the web page listens on 127.0.0.1 at that port and the line loops until SIGINT or SIGTERM."""
    from edge_agent.cli import build_agent, make_sink, web_sinks

    dataset = load_mvtec(write_elpv(work / "data", cell_type))
    rng = np.random.default_rng(0)
    train_dir, line_dir = work / "good_parts", work / "line"
    for d in (train_dir, line_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for p in rng.choice(dataset.train, min(n_train, len(dataset.train)), replace=False):  # names follow modules
        link_or_copy(p, train_dir / p.name)
    good = [p for p, y in zip(dataset.test, dataset.test_labels) if y == 0]
    bad = [p for p, y in zip(dataset.test, dataset.test_labels) if y == 1]
    picks = [("good", p) for p in rng.choice(good, min(n_test, len(good)), replace=False)]
    picks += [("defective", p) for p in rng.choice(bad, min(n_test, len(bad)), replace=False)]
    for i in rng.permutation(len(picks)):  # the line does not sort its parts
        label, p = picks[i]
        link_or_copy(p, line_dir / f"{i:04d}_{label}_{p.name}")

    host, _, port = (broker or "").partition(":")
    mqtt = MqttConfig(enabled=True, host=host, port=int(port or 1883)) if broker else MqttConfig(enabled=False)
    config = Config(device=DeviceConfig(id="demo-camera", state_dir=str(work / "state")),
                    source=SourceConfig(kind="folder", path=str(line_dir)), mqtt=mqtt)
    config.trigger.max_fps = 1000
    shutil.rmtree(config.state_dir, ignore_errors=True)
    if web_port is None:
        # Verdicts as JSON lines on stdout, and over MQTT too when a broker is given.
        sink = RecordingSink(make_sink(config), StdoutSink()) if broker else RecordingSink(StdoutSink())
    else:
        first = make_sink(config) if broker else StdoutSink(open(os.devnull, "w"))  # the page shows the verdicts
        sink = RecordingSink(first, *web_sinks(_with_web(config, web_port, n_train), first))
    agent = build_agent(config, sink=sink)
    agent.request_retrain(n_images=n_train, folder=str(train_dir))
    if web_port is None:
        agent.run()
    else:
        _run_until_stopped(agent)
    v = sink.verdicts
    if not v:
        log.error("no verdicts: the retrain failed (see above)")
        return 1
    labels = np.array(["_defective_" in x["frame"] for x in v])
    flagged = np.array([x["verdict"] == "anomalous" for x in v])
    scores = np.array([x["score"] for x in v])
    ms = np.median([x["latency_ms"]["total"] for x in v])
    print(f"\nedge-agent demo: {len(v)} elpv {cell_type} cells inspected after a retrain on {n_train} good cells "
          f"(model {agent.extractor.manifest.model_id}, delegate {agent.extractor.delegate})")
    print(f"  AUROC {roc_auc(labels, scores):.3f} | detection rate {flagged[labels].mean():.2f} | "
          f"false rejects {flagged[~labels].mean():.2f} at threshold {v[0]['threshold']:.3g} | "
          f"median {ms:.1f} ms per part")
    return 0


def _with_web(config: Config, port: int, n_train: int) -> Config:
    """The demo's configuration with the web page on loopback and a line that loops at a pace a person can follow;
    the page's Retrain button learns from the next ``n_train`` parts."""
    if not os.environ.get(DEMO_PASSWORD_ENV):
        os.environ[DEMO_PASSWORD_ENV] = secrets.token_urlsafe(9)
    config.web = WebConfig(enabled=True, port=port, password_env=DEMO_PASSWORD_ENV)
    config.source.loop = True
    config.trigger.max_fps = WEB_DEMO_FPS
    config.retrain.n_images = n_train
    return config


def _run_until_stopped(agent) -> None:
    from edge_agent.deliver.web import WebSink

    web = next(leaf for leaf in leaves(agent.sink) if isinstance(leaf, WebSink))
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: agent.stop())
    print(f"edge-agent demo: the operator's page is on {web.url} (password: {os.environ[DEMO_PASSWORD_ENV]}); "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    agent.run()
