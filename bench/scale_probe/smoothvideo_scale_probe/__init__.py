"""Memory probe for bench/bench_scale.py, loaded only into the bench's own ComfyUI server (an extra
custom-nodes folder): it adds no node. At every stage boundary ComfyUI announces (an "executing"
message when a node starts, a "progress" message when a node finishes a unit of work: a tuning,
inversion or sampling step) it records, for the stage that just ended:

- peak_rss: the process's peak resident memory during the stage (Linux VmHWM, reset to the
  current RSS at each boundary by writing 5 to /proc/self/clear_refs), and rss at its end;
- peak_malloc: the peak of glibc's bytes in use (mallinfo2: heap + mmap, where torch's CPU
  allocator takes its memory), sampled every 2 ms by a thread, and malloc, those at its end;
- on CUDA: torch's max_memory_allocated / max_memory_reserved during the stage (reset at each
  boundary) and memory_allocated at its end.

GET /smoothvideo_scale_probe/records returns the records; POST /smoothvideo_scale_probe/reset clears
them. The boundaries are taken in ComfyUI's own thread as it sends the message, so a stage's
figures are its own, not a sampling window's.
"""

from __future__ import annotations

import ctypes
import threading
import time

import server
from aiohttp import web

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

MIB = 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = _MallInfo2
except (OSError, AttributeError):
    _libc = None


def malloc_in_use() -> int:
    if _libc is None:
        return 0
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Probe:
    def __init__(self):
        self.lock = threading.Lock()
        self.records: list[dict] = []
        self.peak_malloc = malloc_in_use()
        self.started = time.time()
        self.label = ("start", None, None)
        reset_peak_rss()
        threading.Thread(target=self._sample, daemon=True, name="smoothvideo-scale-probe").start()

    def _sample(self) -> None:
        while True:
            used = malloc_in_use()
            if used > self.peak_malloc:
                self.peak_malloc = used
            time.sleep(0.002)

    def boundary(self, label: tuple) -> None:
        """Ends the current stage (its figures recorded) and starts `label`'s."""
        now, in_use = time.time(), malloc_in_use()
        record = {
            "event": self.label[0], "node": self.label[1], "value": self.label[2],
            "start": self.started, "end": now,
            "peak_rss_mib": status_kib("VmHWM") / 1024, "rss_mib": status_kib("VmRSS") / 1024,
            "peak_malloc_mib": max(self.peak_malloc, in_use) / MIB, "malloc_mib": in_use / MIB,
        }
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                record.update(cuda_peak_allocated_mib=torch.cuda.max_memory_allocated() / MIB,
                              cuda_peak_reserved_mib=torch.cuda.max_memory_reserved() / MIB,
                              cuda_allocated_mib=torch.cuda.memory_allocated() / MIB)
                torch.cuda.reset_peak_memory_stats()
        except Exception as error:  # a probe must never break the run it measures
            record["cuda_error"] = repr(error)
        with self.lock:
            self.records.append(record)
        reset_peak_rss()
        self.peak_malloc = malloc_in_use()
        self.started, self.label = time.time(), label


PROBE = Probe()
_instance = server.PromptServer.instance
_send_sync = _instance.send_sync


def send_sync(event, data, sid=None):
    if event in ("executing", "progress") and isinstance(data, dict):
        PROBE.boundary((event, data.get("node"), data.get("value")))
    return _send_sync(event, data, sid)


_instance.send_sync = send_sync


@_instance.routes.get("/smoothvideo_scale_probe/records")
async def records(request):
    with PROBE.lock:
        return web.json_response(list(PROBE.records))


@_instance.routes.post("/smoothvideo_scale_probe/reset")
async def reset(request):
    with PROBE.lock:
        PROBE.records.clear()
    return web.json_response({})
