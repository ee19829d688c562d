"""What the process's other threads are running, for tests that must prove none is left working."""

from __future__ import annotations

import sys
import threading
from types import ModuleType


def threads_in(module: ModuleType) -> int:
    """How many threads besides the caller's have a frame of ``module``'s code on their stack."""
    filename = module.__file__
    me = threading.get_ident()
    count = 0
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        walker = frame
        while walker is not None and walker.f_code.co_filename != filename:
            walker = walker.f_back
        count += walker is not None
    return count
