"""Failed work gives its memory back (smooth_core/memory.py): checked with weak references to
the tensors a failing call held, while its error is still alive."""

import gc
import weakref

import pytest
import torch

from smooth_core.memory import explain_out_of_memory


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
