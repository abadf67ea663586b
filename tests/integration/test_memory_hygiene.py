"""Memory hygiene in a long-running server: repeated tuning does not grow its resident memory,
and a cancelled tuning run leaves none of its models behind.

The test-only probe node (probe_nodes/smoothvideo_test_probe) runs a garbage collection inside
the server and counts the live tuners, tunable views, optimizers and temporal layers; resident memory
is the server process's VmRSS, read right after each run.
"""

import itertools
import pathlib

import pytest

from comfy_host import ComfyError, load_workflow, node_output
from graphs import tune_graph

pytestmark = pytest.mark.integration
# Measured after each of six runs on one server: 1846, 1875, 1877, 1882, 1844, 1850 MiB (the
# allocator's noise). Keeping a copy of the inflated tiny UNet per run (~120 MiB in float32)
# would grow it by ~240 MiB from the first to the third run; leaks smaller than that are what
# the object counts catch.
RSS_GROWTH_BOUND = 128 * 2**20


PROBES = itertools.count()


def probe(server, after: dict | None = None) -> dict:
    """Runs the probe (after a node of its own, or after `after`'s One-shot Tune in the same prompt):
    the live object counts in the server after a garbage collection. ComfyUI up to 0.17 forgets the
    outputs a new prompt does not use when it starts; 0.33's RAM-pressure cache (its default) after
    each node it runs, so the probe alone comes after a small node that runs anew each time."""
    if after:
        prompt, inputs = dict(after), {"after": ["10", 0]}
    else:
        prompt = {"first": {"class_type": "SmoothVideoTest_Tick", "inputs": {"n": next(PROBES)}}}
        inputs = {"tick": ["first", 0]}
    prompt["probe"] = {"class_type": "SmoothVideoTest_LiveObjects", "inputs": inputs}
    return server.run(prompt)["outputs"]["probe"]["live"][0]


def resident_bytes(server) -> int:
    for line in (pathlib.Path("/proc") / str(server.process.pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for the server process")


def test_the_probe_sees_a_live_tuned_model(server, sample_video):
    """The probe can fail: in the prompt that tuned, the tuned model (cached as the node's
    output) is alive, with its temporal layers; the tuner, its view and its optimizer are not."""
    live = probe(server, after=tune_graph(sample_video[0], steps=1, seed=1))
    assert live["TemporalLayers"] >= 2  # inflated + tuned
    assert live["Tuner"] == 0 and live["NativeTunable"] == 0 and live["Optimizer"] == 0


def test_three_tuning_runs_do_not_grow_resident_memory(server, sample_video):
    rss = []
    for seed in (1, 2, 3):
        server.run(tune_graph(sample_video[0], steps=4, seed=seed))
        rss.append(resident_bytes(server))
        # a new prompt's node ran: ComfyUI's cache let the last one's models go, and so did the tuning
        assert probe(server) == {"Tuner": 0, "NativeTunable": 0, "TemporalLayers": 0, "Optimizer": 0}
    print("server RSS after each run (MiB):", [round(r / 2**20, 1) for r in rss])
    assert rss[2] - rss[0] < RSS_GROWTH_BOUND, f"resident memory grew by {(rss[2] - rss[0]) / 2**20:.1f} MiB"


def test_a_cancelled_tuning_run_releases_its_models(server, sample_video):
    prompt = tune_graph(sample_video[0], steps=500, seed=4)
    events = server.progress_events(timeout=300)
    prompt_id = server.queue(prompt)
    for event in events:  # the first tuning step is done: the tuner and its optimizer exist
        if event["prompt_id"] == prompt_id and event["node"] == "10" and event["value"] >= 1:
            break
    events.close()
    server.interrupt()
    with pytest.raises(ComfyError, match="interrupted"):
        server.wait(prompt_id, timeout=120)
    assert probe(server) == {"Tuner": 0, "NativeTunable": 0, "TemporalLayers": 0, "Optimizer": 0}


def test_frames_too_large_to_encode_are_refused_and_the_server_stays_bounded(server, sample_video):
    """8 frames of 4096 x 4096 px into VL Score: one such frame needs far more memory to VAE-encode
    than a machine has (before, the server grew past 21 GB on a 24 GB machine until the kernel
    killed it, and every queued prompt with it). Refused before encoding; then a normal run."""
    prompt = load_workflow("vl_score")
    prompt["1"]["inputs"]["file"] = sample_video[0]
    before = resident_bytes(server)
    prompt["3"]["inputs"].update(count=8, width=4096, height=4096)
    with pytest.raises(ComfyError, match=r"VAE-encoding one 4096x4096 frame needs about \d+\.\d GiB of memory on the CPU, "
                                         r"but \d+\.\d GiB are free: select frames of at most \d+x\d+ px"):
        server.run(prompt, timeout=300)
    # What is left is the 8 selected frames ComfyUI caches (8 x 4096^2 x 3 float32: 1.5 GiB).
    assert resident_bytes(server) - before < 3 * 2**30
    prompt["3"]["inputs"].update(count=4, width=80, height=80)
    assert -1.0 <= node_output(server.run(prompt), "5")["vl_score"][0] <= 1.0
    assert resident_bytes(server) - before < 3 * 2**30
