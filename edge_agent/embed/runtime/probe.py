"""The delegate probe's child process: load one accelerator delegate, build the interpreter, invoke once.

Why a child: a libedgetpu built for another TensorFlow Lite than the interpreter (or a broken GPU driver) does not
raise, it kills the process with SIGSEGV inside ``load_delegate`` or the first ``invoke``. In the agent that ends
the inspection, and ``auto`` never gets to try the next delegate. ``delegates.probe_delegate`` runs this module
first, with the interpreter module, delegate and model the agent is about to use, and turns a crash, a hang or an
error here into a reason it logs before falling back. Operators can run it by hand the same way:

    python -m edge_agent.embed.runtime.probe MODULE DELEGATE MODEL [--threads N] [--edgetpu-device D]

exits 0 when the model ran once, else 1 with the reason as the last line of stdout (or dies by the signal).
Nothing imports this module, so ``-m`` runs it without a second copy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from edge_agent.embed.runtime.load import ACCELERATORS, DelegateError, open_on


def main(argv: list[str] | None = None) -> int:
    """The child: load, allocate, invoke once; the reason of a failure on stdout, which the parent reads."""
    parser = argparse.ArgumentParser(prog="python -m edge_agent.embed.runtime.probe", description=__doc__)
    parser.add_argument("module", help="interpreter module, e.g. tflite_runtime.interpreter")
    parser.add_argument("delegate", choices=ACCELERATORS)
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--edgetpu-device")
    args = parser.parse_args(argv)
    try:
        interpreter = open_on(importlib.import_module(args.module), args.delegate, args.model, args.threads,
                              args.edgetpu_device)
        interpreter.invoke()
    except Exception as exc:  # any failure is the answer; the parent logs it and falls back
        print(exc if isinstance(exc, DelegateError) else f"{exc.__class__.__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
