"""Few-shot visual inspection on an edge camera: embed frames with a TFLite model, judge them, publish verdicts.

The interpreter's threads own the cores. OpenBLAS is limited to one thread unless the environment says otherwise
(set before numpy loads): the detectors' matrices are a few hundred wide, where BLAS threads gain nothing, and
on a 2-4 core camera they spin against the interpreter's own threads. Measured here: fit + threshold calibration
at N=10 went from 0.87 s to 0.12 s. OpenCV's thread pool is limited the same way (``EDGE_AGENT_OPENCV_THREADS``,
default 1): its work here is small (shrinking a frame, filtering 14 x 14 maps), and its idle threads spinning
after each call slowed the next invoke of the shipped Lite0 from 1.3 to 2.1-3.0 ms on this 2-core machine.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402  (after the BLAS setting, which must precede numpy, which cv2 loads)

cv2.setNumThreads(int(os.environ.get("EDGE_AGENT_OPENCV_THREADS", "1")))

__version__ = "0.1.0"
