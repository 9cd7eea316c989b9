"""TFLite runtime back-ends behind one small interface: ``open_interpreter(model_path, delegate, threads)``.

Why one interface: CPU (XNNPACK), GPU delegate and Coral Edge TPU differ only in how the interpreter is
created; everything after that (set input, invoke, read outputs) is the same, so the rest of the agent
never knows which one it runs on beyond the name it reports.
"""

from edge_agent.embed.runtime.delegates import DELEGATES, RuntimeHandle, open_interpreter
from edge_agent.embed.runtime.interpreter import interpreter_module

__all__ = ["DELEGATES", "RuntimeHandle", "open_interpreter", "interpreter_module"]
