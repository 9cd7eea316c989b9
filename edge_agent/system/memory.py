"""Handing freed heap back to the system.

Why: glibc keeps the memory a fit freed (hundreds of MB of augmented copies and their features) in its arenas;
an agent that retrains every shift for months would hold its peak forever.
"""

from __future__ import annotations

import ctypes


def return_freed_memory() -> None:
    """``malloc_trim(0)`` where the C library is glibc; nothing elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
