"""A ComfyUI whose Python cannot import diffusers (a failed install of requirements.txt, or a
conflict with another pack): the pack still loads every node that does not run a diffusers UNet,
says in the log which nodes are missing and how to install them, and their workflows run."""

import math
import re

import pytest

from comfy_host import ComfyServer, node_output
from graphs import tiny_workflow
from make_sample_video import render_frames, write_video

pytestmark = pytest.mark.integration
WITHOUT_VIDEO_MODEL = {"SmoothVideo_VLScore", "SmoothVideo_SelectVideoFrames", "SmoothVideo_SmoothNoiseSampler",
                       "SmoothVideo_SameNoiseForAllFrames"}
NEED_DIFFUSERS = {"SmoothVideo_InflateUNet", "SmoothVideo_CrossFrameAttention", "SmoothVideo_DDIMInvertVideo",
                  "SmoothVideo_OneShotTune", "SmoothVideo_LoadTunedVideoWeights"}
# On the server's path ahead of everything: a sitecustomize that makes `import diffusers` fail.
REFUSE_DIFFUSERS = '''
import sys


class RefuseDiffusers:
    def find_spec(self, name, path=None, target=None):
        if name == "diffusers" or name.startswith("diffusers."):
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
        return None


sys.meta_path.insert(0, RefuseDiffusers())
'''


@pytest.fixture(scope="module")
def bare_server(host, tmp_path_factory):
    folder = tmp_path_factory.mktemp("no_diffusers")
    (folder / "sitecustomize.py").write_text(REFUSE_DIFFUSERS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(folder))
        with ComfyServer(host[1]) as running:
            yield running


def test_the_nodes_without_a_video_model_load_and_the_log_says_what_is_missing(bare_server):
    info = bare_server.get("/object_info")
    pack = {name for name, node in info.items() if node["python_module"] == "custom_nodes.ComfyUI-SmoothVideo"}
    assert pack == WITHOUT_VIDEO_MODEL
    log = bare_server.log()
    assert "SmoothVideo: diffusers cannot be imported (No module named 'diffusers' (refused by the test))" in log
    assert "pip install -r requirements.txt" in log and not re.search(r"IMPORT FAILED\)?:? .*SmoothVideo", log)
    assert not NEED_DIFFUSERS & set(info)


@pytest.mark.parametrize("workflow, score_node", [("vl_score", "5"), ("ip2p_video_zero_smooth", "17")])
def test_their_workflows_run(bare_server, workflow, score_node):
    name = "bare_clip.mp4"
    write_video(bare_server.base / "input" / name, render_frames(frames=12, size=128, seed=11), fps=8)
    prompt = tiny_workflow(workflow, name)
    score = node_output(bare_server.run(prompt), score_node)["vl_score"][0]
    assert math.isfinite(score) and -1.0 <= score <= 1.0
