"""Run latency and peak memory of one converted model on CPU, in a fresh process (so its peak RSS is its own).

The time is the back-end's ``run`` (input in, invoke, outputs out), as the agent calls it, on whichever runtime the
model folder needs.

    python -m bench.invoke MODEL_DIR --threads 1 --repeat 50
"""

from __future__ import annotations

from bench.common import emit, proc_status, timeit  # first: the thread limits, before numpy loads

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edge_agent.embed.manifest import load_manifest  # noqa: E402
from edge_agent.embed.runtime import RuntimeOptions, open_backend  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    m = load_manifest(args.model)
    backend = open_backend(args.model, m, RuntimeOptions("cpu", args.threads))
    x = np.random.default_rng(0).integers(0, 255, backend.input.shape).astype(backend.input.dtype)
    t = timeit(lambda: backend.run(x), args.repeat)
    emit({"kind": "invoke", "model": m.name, "backbone": m.backbone, "precision": m.precision,
          "threads": args.threads, "size_mb": round((args.model / m.model_file).stat().st_size / 1e6, 2),
          "peak_rss_mb": round(proc_status("VmHWM") / 1024, 1), **t})


if __name__ == "__main__":
    main()
