"""Failed work gives its memory back (smooth_core/memory.py): checked with weak references to
the tensors a failing call held, while its error is still alive."""

import gc
import pathlib
import subprocess
import sys
import weakref

import pytest
import torch

from smooth_core.memory import explain_out_of_memory

ROOT = pathlib.Path(__file__).resolve().parents[2]


def failing_work(kept: list, error: BaseException):
    """Holds an 'activation' tensor in its frame, then fails."""
    activations = torch.ones(1024)
    kept.append(weakref.ref(activations))
    raise error


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_a_plain_error_keeps_the_failed_frames_tensors_alive():
    """The control: without the helpers, the error's traceback holds the tensor."""
    kept = []
    with pytest.raises(torch.OutOfMemoryError) as info:
        failing_work(kept, oom())
    assert kept[0]() is not None
    del info
    gc.collect()  # the traceback and this frame form a cycle
    assert kept[0]() is None


def test_out_of_memory_is_explained_and_frees_the_failed_call():
    kept = []
    with pytest.raises(torch.OutOfMemoryError) as info:
        with explain_out_of_memory("tuning 24 frames of 512x512 px", "turn on gradient_checkpointing"):
            failing_work(kept, oom())
    assert str(info.value) == "out of memory while tuning 24 frames of 512x512 px: turn on gradient_checkpointing"
    assert kept[0]() is None  # freed while the error is still held


def test_other_errors_pass_through_explain_out_of_memory_unchanged():
    kept = []
    error = ValueError("bad input")
    with pytest.raises(ValueError) as info:
        with explain_out_of_memory("sampling", "fewer frames"):
            failing_work(kept, error)
    assert info.value is error


class Interrupted(Exception):
    """Stands for ComfyUI's InterruptProcessingException (an Exception subclass)."""


@pytest.mark.parametrize("error", [Interrupted(), KeyboardInterrupt(), RuntimeError("NaN loss")])
def test_any_other_error_frees_the_failed_call_and_is_reraised_as_it_was(error):
    kept = []
    with pytest.raises(type(error)) as info:
        with explain_out_of_memory("tuning", "fewer frames"):
            failing_work(kept, error)
    assert info.value is error
    assert kept[0]() is None
    # the report still names where it failed
    assert any(entry.name == "failing_work" for entry in info.traceback)


RETURN_PAGES = r"""
import os, sys, torch
sys.path.insert(0, sys.argv[1])
from smooth_core.memory import return_freed_host_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

kept, freed = [], []
for _ in range(16384):  # 512 MiB of 32 KiB tensors (below glibc's mmap threshold), each followed by a small kept one
    freed.append(torch.ones(8192))
    kept.append(torch.ones(16))
start = rss_mib()
del freed
after_free = rss_mib()
ran = return_freed_host_memory()
after_trim = rss_mib()
print(ran, start, after_free, after_trim)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_host_memory_goes_back_to_the_system():
    """Freed tensors held apart by live ones stay in glibc's heap (its automatic trim only takes the
    heap's free top): the process keeps the pages until `return_freed_host_memory` hands them back.
    In a fresh process, so the heap is only this test's."""
    out = subprocess.run([sys.executable, "-c", RETURN_PAGES, str(ROOT)], capture_output=True, text=True, check=True)
    ran, start, after_free, after_trim = out.stdout.split()
    start, after_free, after_trim = float(start), float(after_free), float(after_trim)
    assert ran == "True"
    assert after_free > start - 100, f"the freed pages should still be in the heap: {start:.0f} -> {after_free:.0f} MiB"
    assert after_trim < after_free - 400, f"RSS {after_free:.0f} -> {after_trim:.0f} MiB after the trim"
