"""Failed or cancelled work gives its memory back, and out-of-memory errors say how to fit.

A Python exception keeps every frame it unwound alive through its traceback, and with them
each tensor those frames held (activations, optimizer state): ComfyUI keeps the exception
until it has reported the error. `explain_out_of_memory` clears those frames' locals as the
error leaves the block; the traceback's text (files, lines) stays for the report.

Work that is done gives its host memory back too: on a CPU a tuning step's activations are many
tensors allocated and freed inside glibc's heaps, whose freed pages stay in the process after the
tune (at SD1.5 size, 8 x 256 px, gigabytes that every later stage's peak sits on).
`return_freed_host_memory` hands them to the system.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
import traceback

import torch


@contextlib.contextmanager
def explain_out_of_memory(what: str, advice: str):
    """Any exception (an error, an interrupt) leaving the block first clears the locals of the
    frames it unwound below the block; tensors held by the frame that holds the `with` are that
    frame's to drop. A torch.OutOfMemoryError is then re-raised as one that reads
    "out of memory while <what>: <advice>", after the CUDA cache is emptied, so the memory is
    free while the error is reported; every other exception is re-raised unchanged."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        # The new error carries the old one as its context: clearing its frames, not just
        # dropping the name, is what frees their tensors.
        traceback.clear_frames(error.__traceback__)
        del error
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise torch.OutOfMemoryError(f"out of memory while {what}: {advice}") from None
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)
        raise


def return_freed_host_memory() -> bool:
    """glibc's `malloc_trim(0)`: the free pages of every heap (the main one and each thread's arena,
    within it as well as at its top) go back to the system. Tensors in use are untouched; a later
    allocation takes new pages as it would have. Returns whether it ran: only on Linux with glibc
    (musl and other systems have no such call, and nothing is done)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
