"""The pack needs nothing beyond ComfyUI: the test servers cannot import diffusers (a sitecustomize
on their path refuses it, as in a ComfyUI where its install failed or conflicts with another
pack's), every node of the pack loads there, and every example workflow runs."""

import json
import math
import pathlib
import re
import uuid

import pytest

from comfy_host import node_output
from graphs import PACK_NODES, tiny_workflow

pytestmark = [pytest.mark.integration, pytest.mark.every_host]
REPO = pathlib.Path(__file__).resolve().parents[2]
WORKFLOWS = sorted(path.stem for path in (REPO / "workflows" / "api").glob("*.json"))


def test_the_server_cannot_import_diffusers_and_every_node_loads(server):
    log = server.log()
    assert "sitecustomize: import diffusers is refused in this process" in log
    assert not re.search(r"IMPORT FAILED\)?:? .*SmoothVideo", log)
    info = server.get("/object_info")
    pack = {name for name, node in info.items() if node["python_module"] == "custom_nodes.ComfyUI-SmoothVideo"}
    assert pack == PACK_NODES


def test_no_requirement_asks_comfyui_users_for_diffusers():
    requirements = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert [line for line in requirements if line] == []


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_every_workflow_runs(server, sample_video, workflow):
    prompt = tiny_workflow(workflow, sample_video[0])
    for node in prompt.values():  # tuned anew, not resumed from another test's checkpoint
        if node["class_type"] == "SmoothVideo_OneShotTune":
            node["inputs"]["save_name"] += f"_bare_{uuid.uuid4().hex[:6]}"
    entry = server.run(prompt)
    scores = [output["vl_score"][0] for node_id in prompt if "vl_score" in (output := node_output(entry, node_id) or {})]
    assert scores and all(math.isfinite(score) and -1.0 <= score <= 1.0 for score in scores), json.dumps(scores)
