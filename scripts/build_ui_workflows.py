"""Builds the UI-format workflow (what the browser loads) from each API-format twin.

workflows/api/NAME.json is the source (what HTTP clients post); workflows/NAME.json is
generated from it with the node definitions of a live server (/object_info), so the two
never drift apart. Usage: `.host/venv/bin/python scripts/build_ui_workflows.py` (starts the
project's ComfyUI itself); the integration tests check the files are up to date.
"""

from __future__ import annotations

import json
import pathlib

from comfy_host import REPO, ComfyServer

WORKFLOWS = REPO / "workflows"
PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def input_specs(definition: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of a node's inputs in display order."""
    specs = []
    for section in ("required", "optional"):
        for name in definition.get("input_order", {}).get(section, []):
            spec = definition["input"][section][name]
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            specs.append((name, kind, spec[1] if len(spec) > 1 else {}))
    return specs


def depth_of(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            links = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(i) for i in links), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


def api_to_ui(prompt: dict, object_info: dict) -> dict:
    depth = depth_of(prompt)
    rows: dict[int, int] = {}
    links, nodes = [], []
    outputs: dict[tuple[str, int], list[int]] = {}
    for node_id in sorted(prompt, key=int):
        node = prompt[node_id]
        definition = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, kind, options in input_specs(definition):
            value = node["inputs"].get(name)
            if isinstance(value, list):
                link_id = len(links) + 1
                source, slot = value
                out_type = object_info[prompt[source]["class_type"]]["output"][slot]
                links.append([link_id, int(source), slot, int(node_id), len(inputs), out_type])
                outputs.setdefault((source, slot), []).append(link_id)
                entry = {"name": name, "type": kind, "link": link_id}
                if kind in PRIMITIVES:
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            elif kind in PRIMITIVES:
                widgets.append(value if value is not None else options.get("default"))
                if options.get("control_after_generate"):
                    widgets.append("fixed")
            elif not options.get("optional", False) and name in definition["input"].get("required", {}):
                inputs.append({"name": name, "type": kind, "link": None})
        column = depth[node_id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes.append({
            "id": int(node_id),
            "type": node["class_type"],
            "pos": [40 + 380 * column, 40 + 300 * row],
            "size": [340, 120 + 26 * len(widgets)],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": inputs,
            "outputs": [],
            "title": node.get("_meta", {}).get("title", definition.get("display_name", node["class_type"])),
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets,
        })
    for entry in nodes:
        definition = object_info[entry["type"]]
        entry["outputs"] = [
            {"name": name, "type": kind, "links": outputs.get((str(entry["id"]), slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(definition["output_name"], definition["output"]))
        ]
    for order, node_id in enumerate(sorted(prompt, key=lambda i: (depth[i], int(i)))):
        next(n for n in nodes if n["id"] == int(node_id))["order"] = order
    return {
        "last_node_id": max(int(i) for i in prompt),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def build_all(object_info: dict) -> dict[pathlib.Path, str]:
    """Target path -> the UI workflow text for every API workflow."""
    return {
        WORKFLOWS / api.name: json.dumps(api_to_ui(json.loads(api.read_text()), object_info), indent=2) + "\n"
        for api in sorted((WORKFLOWS / "api").glob("*.json"))
    }


def main() -> None:
    with ComfyServer() as server:
        object_info = server.get("/object_info")
    for path, text in build_all(object_info).items():
        path.write_text(text)
        print(path.relative_to(REPO))


if __name__ == "__main__":
    main()
