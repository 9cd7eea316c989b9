"""Invoke latency and peak memory of one TFLite model, in a fresh process (so its peak RSS is its own).

    python -m bench.invoke MODEL_DIR --threads 1 --repeat 50
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import emit, proc_status, timeit
from edge_agent.embed.manifest import load_manifest, verified_model_path
from edge_agent.embed.runtime import open_interpreter


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    m = load_manifest(args.model)
    handle = open_interpreter(verified_model_path(args.model, m), "cpu", args.threads)
    it = handle.interpreter
    inp = it.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 255, inp["shape"]).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    t = timeit(it.invoke, args.repeat)
    emit({"kind": "invoke", "model": m.name, "backbone": m.backbone, "precision": m.precision,
          "threads": args.threads, "size_mb": round((args.model / m.model_file).stat().st_size / 1e6, 2),
          "peak_rss_mb": round(proc_status("VmHWM") / 1024, 1), **t})


if __name__ == "__main__":
    main()
