"""``edge-agent demo``: the agent's real job on a fresh machine, with no camera and no broker.

Solar cells from the ``elpv-dataset`` PyPI package stand in for a production line: the agent retrains from
N good cells (as at shift start), then inspects a folder of unseen good and defective cells through its
normal source -> embed -> score -> publish path, verdicts as JSON lines on stdout. The summary compares
its verdicts with the data set's labels, which the agent never sees.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from edge_agent.config import Config, DeviceConfig, MqttConfig, SourceConfig
from edge_agent.offline.datasets import link_or_copy, load_mvtec, write_elpv
from edge_agent.offline.metrics import roc_auc
from edge_agent.deliver.recording import RecordingSink
from edge_agent.deliver.stdout import StdoutSink

log = logging.getLogger(__name__)


def run_demo(work: Path, n_train: int = 10, n_test: int = 40, cell_type: str = "mono", broker: str | None = None) -> int:
    """With ``broker`` (HOST:PORT) the verdicts also go to MQTT under edge-inspect/demo-camera/."""
    from edge_agent.cli import build_agent, make_sink

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
    # Verdicts as JSON lines on stdout, and over MQTT too when a broker is given.
    sink = RecordingSink(make_sink(config), StdoutSink()) if broker else RecordingSink(StdoutSink())
    agent = build_agent(config, sink=sink)
    agent.request_retrain(n_images=n_train, folder=str(train_dir))
    agent.run()
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
