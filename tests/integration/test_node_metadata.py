"""Every node of the pack reads like a ComfyUI node in /object_info (what the frontend shows):
one category, a display name, a description, and a tooltip on every input and output."""

import pathlib
import tomllib

import pytest

from comfy_host import HOSTS
from graphs import PACK_NODES

pytestmark = [pytest.mark.integration, pytest.mark.every_host]
EXPECTED = PACK_NODES


@pytest.fixture(scope="module")
def pack_nodes(server):
    info = server.get("/object_info")
    return {name: node for name, node in info.items() if node["python_module"] == "custom_nodes.ComfyUI-SmoothVideo"}


def test_the_pack_registers_every_node(pack_nodes):
    assert set(pack_nodes) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_node_has_category_name_description_and_tooltips(pack_nodes, name):
    node = pack_nodes[name]
    assert node["category"] == "SmoothVideo"
    assert node["display_name"] and node["display_name"] != name
    assert len(node["description"]) > 40
    inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
    missing = [key for key, spec in inputs.items() if len(spec) < 2 or not spec[1].get("tooltip")]
    assert missing == [], f"inputs without a tooltip: {missing}"
    assert len(node["output_tooltips"]) == len(node["output"]) and all(node["output_tooltips"])


def test_the_declared_comfyui_versions_are_the_tested_hosts(server):
    """pyproject.toml's [tool.comfy] (what the registry and ComfyUI-Manager read) names the ComfyUI
    versions this suite runs on, the oldest as the requirement; this server is one of them."""
    comfy = tomllib.loads((pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["tested-comfyui"] == list(HOSTS)
    oldest = min(HOSTS, key=lambda version: tuple(map(int, version.split("."))))
    assert comfy["requires-comfyui"] == f">={oldest}"
    assert server.version in comfy["tested-comfyui"]
