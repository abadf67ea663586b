"""Failed or cancelled work gives its memory back, and out-of-memory errors say how to fit.

A Python exception keeps every frame it unwound alive through its traceback, and with them
each tensor those frames held (activations, optimizer state): ComfyUI keeps the exception
until it has reported the error. `explain_out_of_memory` clears those frames' locals as the
error leaves the block; the traceback's text (files, lines) stays for the report.
"""

from __future__ import annotations

import contextlib
import gc
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
