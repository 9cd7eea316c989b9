"""Frame sources behind one small interface (`FrameSource`): a folder, OpenCV capture, the Pi camera.

``open_source(config)`` builds the one the configuration names; `ReopeningSource` wraps it so that a camera
unplugged or a dropped stream is reopened with backoff while the agent keeps running.
"""

from edge_agent.capture.base import EndOfStream, Frame, FrameSource, SourceError
from edge_agent.capture.factory import open_source
from edge_agent.capture.reopening import ReopeningSource

__all__ = ["EndOfStream", "Frame", "FrameSource", "ReopeningSource", "SourceError", "open_source"]
