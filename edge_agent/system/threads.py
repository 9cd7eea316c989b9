"""Thread limits for the numeric libraries, set by each entry point before numpy loads.

The interpreter's threads own the cores. OpenBLAS is limited to one thread unless the environment says otherwise:
the detectors' matrices are a few hundred wide, where BLAS threads gain nothing, and on a 2-4 core camera they
spin against the interpreter's own threads. OpenCV's thread pool is limited the same way
(``EDGE_AGENT_OPENCV_THREADS``, default 1): its work here is small (shrinking a frame, filtering 14 x 14 maps),
and its idle threads spinning after each call slow the next invoke. Figures: docs/performance.md.

Why not at ``import edge_agent``: importing a library must not change the process it is imported into (the
converter imports this package too, and so do tests and notebooks).
"""

from __future__ import annotations

import os


def limit_threads() -> None:
    """Cap OpenBLAS (takes effect only if numpy has not loaded yet) and OpenCV to their configured threads."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import cv2  # after the BLAS setting: cv2 loads numpy

    cv2.setNumThreads(int(os.environ.get("EDGE_AGENT_OPENCV_THREADS", "1")))
