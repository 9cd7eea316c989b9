"""Frames in: sources behind one small interface (`FrameSource`: a folder, OpenCV capture, the Pi camera), image
files, and the preprocessing that turns a frame into the model's input.

`edge_agent.capture.factory.open_source(config)` builds the source the configuration names; `ReopeningSource`
wraps it so that a camera unplugged or a dropped stream is reopened with backoff while the agent keeps running.
The factory is not imported here: it reads the configuration, which knows every role, and the modules below the
loop (the feature extractor uses `preprocess`) must not load all of them.
"""

from edge_agent.capture.base import EndOfStream, Frame, FrameSource, SourceError
from edge_agent.capture.reopening import ReopeningSource

__all__ = ["EndOfStream", "Frame", "FrameSource", "ReopeningSource", "SourceError"]
