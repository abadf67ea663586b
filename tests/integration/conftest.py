"""A real ComfyUI server (the project's host, scripts/setup_host.sh) for the whole session."""

import os
import pathlib
import sys

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from comfy_host import HOSTS, ComfyServer  # noqa: E402
from make_sample_video import render_frames, write_video  # noqa: E402


PROBE_NODES = pathlib.Path(__file__).resolve().parent / "probe_nodes"
# A sitecustomize that makes `import diffusers` fail in the servers: the pack runs without it.
REFUSE_DIFFUSERS = pathlib.Path(__file__).resolve().parent / "refuse_diffusers"
FIRST_HOST = next(iter(HOSTS))
# The oldest and the newest host run every integration test; a host between them runs the tests
# marked every_host (every node, every workflow, the browser's load), which keeps the suite's time
# in bounds. SMOOTHVIDEO_EVERY_TEST_ON_EVERY_HOST=1 runs them all everywhere.
MIDDLE_HOSTS = set(list(HOSTS)[1:-1])


def left_out(item) -> bool:
    """Whether this host's run of the test is not run: a test marked first_host runs on the first host
    only (what is made from that host's node definitions); one not marked every_host runs on the
    middle hosts only with SMOOTHVIDEO_EVERY_TEST_ON_EVERY_HOST=1."""
    version = item.callspec.params.get("host") if getattr(item, "callspec", None) is not None else None
    if version is None:
        return False
    if item.get_closest_marker("first_host"):
        return version != FIRST_HOST
    return (version in MIDDLE_HOSTS and not item.get_closest_marker("every_host")
            and os.environ.get("SMOOTHVIDEO_EVERY_TEST_ON_EVERY_HOST") != "1")


def pytest_collection_modifyitems(config, items):
    subset = [item for item in items if left_out(item)]
    if subset:
        dropped = set(subset)
        config.hook.pytest_deselected(items=subset)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture(scope="session", params=list(HOSTS), ids=[f"comfyui-{version}" for version in HOSTS])
def host(request):
    """Every integration test runs once per ComfyUI version (the test id names it): (version, host folder)."""
    version, folder = request.param, HOSTS[request.param]
    # No skip for the first host: without it the integration tests must fail, naming the set-up step.
    if version != FIRST_HOST and not (folder / "ComfyUI" / "main.py").exists():
        pytest.skip(f"ComfyUI {version} host not built: scripts/setup_host.sh builds it when "
                    f"../shared/hosts/comfyui-{version} (or $SMOOTHVIDEO_COMFYUI_{version.replace('.', '')}) holds its source")
    return version, folder


@pytest.fixture(scope="session")
def server(host):
    # probe_nodes/ adds a test-only node that counts live objects inside the server. No test server
    # can import diffusers: every workflow and node the suite runs runs without it.
    version, folder = host
    with ComfyServer(folder, extra_custom_nodes=(PROBE_NODES,), extra_env={"PYTHONPATH": str(REFUSE_DIFFUSERS)}) as running:
        assert running.version == version
        yield running


@pytest.fixture(scope="session")
def sample_video(server):
    """A smooth synthetic clip in ComfyUI's input folder; returns (file name, frames)."""
    frames = render_frames(frames=12, size=128, seed=11)
    name = "test_smooth_clip.mp4"
    write_video(server.base / "input" / name, frames, fps=8)
    return name, frames


@pytest.fixture(scope="session")
def shuffled_video(server, sample_video):
    _, frames = sample_video
    order = [0, 6, 2, 9, 4, 11, 1, 7, 3, 10, 5, 8]
    name = "test_shuffled_clip.mp4"
    write_video(server.base / "input" / name, frames[order], fps=8)
    return name
