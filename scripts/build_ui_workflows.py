"""Builds the UI-format workflow (what the browser loads) from each API-format twin.

workflows/api/NAME.json is the source (what HTTP clients post); workflows/NAME.json is
generated from it with the node definitions of a live server (/object_info), so the two
never drift apart. Usage: `.host/venv/bin/python scripts/build_ui_workflows.py` (starts the
project's ComfyUI itself); the integration tests check the files are up to date.
"""

from __future__ import annotations

import itertools
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


# LiteGraph's measures (frontend 1.32): a title bar, a row per input/output socket, a row per widget.
TITLE, SLOT, WIDGET = 30, 20, 24
MULTILINE = 54  # a multiline text box
# The canvas's node font: Arial in frontend 1.32 (ComfyUI 0.3.75), Inter in 1.41 (ComfyUI 0.17.2).
# Their advance widths (1/1000 em) of the printable ASCII characters, " " to "~", as the page's
# canvas measures them at the canvas's 14 px (headless Chromium, each frontend's own page; Inter
# is a variable font whose optical size makes it wider at 14 px than at display sizes).
ARIAL = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, *[556] * 10,
    278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556,
    833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333,
    500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
]
INTER = [
    281, 288, 466, 633, 642, 982, 644, 300, 365, 365, 501, 662, 288, 460, 288, 360, 631, 407, 610,
    618, 646, 593, 620, 566, 619, 620, 288, 302, 662, 662, 662, 511, 966, 690, 654, 730, 722, 601,
    590, 746, 743, 269, 571, 672, 565, 903, 753, 765, 639, 765, 644, 642, 646, 744, 690, 985, 682,
    679, 629, 365, 360, 365, 471, 456, 323, 562, 612, 571, 612, 583, 370, 613, 591, 242, 242, 549,
    242, 876, 591, 600, 612, 612, 376, 528, 327, 591, 562, 818, 546, 562, 552, 426, 333, 426, 662,
]
PREVIEW = 400  # a loader's preview of its picture or video (the sample clip is square)
GAP_X, GAP_Y, BAND_GAP = 36, 30, 60
# The screen the layout is made for: the README's screenshots (tests/integration/test_browser.py)
# use this viewport and fit the graph in the part of it the frontend's menus leave free.
SCREEN = (1920, 1200)
FREE = (SCREEN[0] - 90, SCREEN[1] - 160)
# The canvas draws no text below 8/14 = 0.57 (its default LiteGraph.Canvas.MinFontSizeForLOD).
LEGIBLE_ZOOM = 0.62
ENOUGH_ZOOM = 0.85
MAX_BANDS = 3


def depth_of(prompt: dict) -> dict[str, int]:
    """Each node's longest path from a node without inputs."""
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            depth[node_id] = 1 + max((visit(i) for i in predecessors(prompt, node_id)), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


def predecessors(prompt: dict, node_id: str) -> list[str]:
    return [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]


def columns_of(prompt: dict) -> list[list[list[str]]]:
    """Nodes by column (a layer's nodes, then its outputs), in the order that keeps links short.

    A node's column is its longest path from a source; a source (a loader, a setting) sits just
    before the first node that uses it. A node follows its main inputs (those from the nearest
    column): nodes fed from one node first, in the order of their input, then nodes that join
    several (they go below, out of the rows). The outputs of a column (nodes nobody uses: save,
    score) get a column of their own after it, so that a chain of nodes reads as a row.
    """
    depth = depth_of(prompt)
    users: dict[str, list[str]] = {i: [] for i in prompt}
    for node_id in prompt:
        for source in predecessors(prompt, node_id):
            users[source].append(node_id)
    column = dict(depth)
    for node_id in prompt:
        if not predecessors(prompt, node_id) and users[node_id]:
            column[node_id] = min(depth[u] for u in users[node_id]) - 1

    def nearest(node_ids: list[str], pick) -> list[str]:
        if not node_ids:
            return []
        c = pick(column[i] for i in node_ids)
        return sorted({i for i in node_ids if column[i] == c})

    main_inputs = {i: nearest(predecessors(prompt, i), max) for i in prompt}
    main_users = {i: nearest(users[i], min) for i in prompt}
    columns = [sorted((i for i in prompt if column[i] == c), key=int) for c in range(max(column.values()) + 1)]
    columns = [c for c in columns if c]
    rank = {i: float(int(i)) for i in prompt}

    def key(node_id: str):
        neighbours = main_inputs[node_id] or main_users[node_id]
        centre = sum(rank[i] for i in neighbours) / len(neighbours) if neighbours else rank[node_id]
        return len(main_inputs[node_id]) > 1, centre, int(node_id)

    for _ in range(4):
        for c in columns:
            c.sort(key=key)
            rank.update({i: n for n, i in enumerate(c)})
    return [[part for part in ([i for i in c if users[i]], [i for i in c if not users[i]]) if part] for c in columns]


def text_width(text: str, size: int = 14) -> float:
    """Width of text in the canvas's node font (14 px), the wider of the two frontends' fonts."""
    return size / 1000 * max(sum(font[ord(c) - 32] if " " <= c <= "~" else 556 for c in text) for font in (ARIAL, INTER))


def node_size(definition: dict, title: str) -> tuple[int, int]:
    """The size the frontend gives the node (its computeSize), a little rounded up."""
    sockets, widgets = 0, 0
    for name, kind, options in input_specs(definition):
        if kind not in PRIMITIVES:
            sockets += 1
        elif kind == "STRING" and options.get("multiline"):
            widgets += MULTILINE
        else:
            widgets += WIDGET * (2 if options.get("control_after_generate") else 1)
        if options.get("video_upload") or options.get("image_upload"):
            widgets += WIDGET + PREVIEW  # the upload button and the preview
    height = SLOT * max(sockets, len(definition["output"]), 1) + 6 + (widgets + 8 if widgets else 0)
    width = max(220, TITLE * 2 + 4 + text_width(title), PREVIEW if widgets > PREVIEW else 0)  # 30 px each side of the title
    return int(-(-width // 10) * 10), int(-(-height // 10) * 10)


def lay_band(columns: list[list[str]], sizes, prompt, users, limit: int) -> tuple[int, int, int, dict]:
    """The band's width, height and number of columns split, and the positions (x, y of the
    title's top, width) of its nodes from its top left corner.

    A node sits level with its highest input in the band when there is room, so that a chain of
    nodes reads as a row; a column that would grow taller than limit goes on in a new column. A
    node fed from earlier bands only (a loader, a setting) then moves down towards its users.
    """
    stacks: list[list[str]] = []
    y_of: dict[str, int] = {}
    for column in columns:
        stacks.append([])
        y = 0
        for i in column:
            tops = [y_of[p] for p in predecessors(prompt, i) if p in y_of]
            top = max(y, min(tops, default=y))
            if stacks[-1] and top + TITLE + sizes[i][1] > limit:
                stacks.append([])
                top = min(tops, default=0)
                if top + TITLE + sizes[i][1] > limit:
                    top = 0
            y_of[i] = top
            stacks[-1].append(i)
            y = top + TITLE + sizes[i][1] + GAP_Y
    placed, x = {}, 0
    for nodes in stacks:
        width = max(sizes[i][0] for i in nodes)
        for i in nodes:
            placed[i] = (x, y_of[i], width)
        x += width + GAP_X
    width = x - GAP_X
    height = max(y + TITLE + sizes[i][1] for i, (_, y, _) in placed.items())
    for nodes in stacks:
        below = height + GAP_Y
        for i in reversed(nodes):
            left, y, column_width = placed[i]
            inputs = [p for p in predecessors(prompt, i) if p in placed]
            later = [placed[u][1] for u in users[i] if u in placed and placed[u][0] > left]
            if not inputs and later:
                y = max(y, min(min(later), below - GAP_Y - TITLE - sizes[i][1]))
                placed[i] = (left, y, column_width)
            below = y
    return width, height, len(stacks) - len(columns), placed


def place(prompt: dict, sizes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int, int]]:
    """x, y (of the title's top) and width of each node: the columns left to right, wrapped in
    up to MAX_BANDS bands below each other (between layers), each band's columns no taller than a
    limit. Of the wrappings and limits, the layout that shows the whole graph on SCREEN at
    LEGIBLE_ZOOM (or as close as it gets) with the fewest split columns, then the largest zoom up
    to ENOUGH_ZOOM, then the fewest bands."""
    layers = columns_of(prompt)
    users: dict[str, list[str]] = {i: [] for i in prompt}
    for i in prompt:
        for p in predecessors(prompt, i):
            users[p].append(i)
    tallest = max(TITLE + h for _, h in sizes.values())
    total = sum(TITLE + h + GAP_Y for _, h in sizes.values())
    limits = sorted({tallest, total, *range(tallest - tallest % 50 + 50, total, 50)})
    # Every band (a run of layers) at every limit: its width, height, split columns and nodes.
    bands = {}
    for a in range(len(layers)):
        for b in range(a + 1, len(layers) + 1):
            columns = [c for layer in layers[a:b] for c in layer]
            seen = set()
            for limit in limits:
                option = lay_band(columns, sizes, prompt, users, limit)
                if option[:3] not in seen:
                    seen.add(option[:3])
                    bands.setdefault((a, b), []).append(option)
    best = None
    n = len(layers)
    cuts = [cut for k in range(MAX_BANDS) for cut in itertools.combinations(range(1, n), k)]
    for cut in cuts:
        runs = list(zip((0, *cut), (*cut, n)))
        if min(len(bands[r][0][3]) for r in runs) < len(prompt) // 5:
            continue  # a band of a few nodes: a tail, not a part of the graph
        # The zoom follows from the widest band and the bands' total height: for each width
        # allowed and each number of split columns allowed, each band takes its lowest layout.
        for widest in sorted({o[0] for r in runs for o in bands[r]}):
            for most_splits in range(1 + max(o[2] for r in runs for o in bands[r])):
                choice = []
                for r in runs:
                    fits = [o for o in bands[r] if o[0] <= widest and o[2] <= most_splits]
                    if not fits:
                        break
                    choice.append(min(fits, key=lambda o: (o[1], o[2])))
                else:
                    width = max(o[0] for o in choice)
                    height = sum(o[1] for o in choice) + BAND_GAP * (len(choice) - 1)
                    zoom = min(FREE[0] / (width + 20), FREE[1] / (height + 20), 1.0)
                    splits = sum(o[2] for o in choice)
                    key = (round(min(zoom, LEGIBLE_ZOOM), 2), -splits, round(min(zoom, ENOUGH_ZOOM), 2), -len(runs), zoom)
                    if best is None or key > best[0]:
                        best = (key, choice)
    placed, top = {}, 0
    for _, height, _, band in best[1]:
        placed.update({i: (x, top + y, w) for i, (x, y, w) in band.items()})
        top += height + BAND_GAP
    return placed


def api_to_ui(prompt: dict, object_info: dict) -> dict:
    depth = depth_of(prompt)
    titles = {
        i: node.get("_meta", {}).get("title", object_info[node["class_type"]].get("display_name", node["class_type"]))
        for i, node in prompt.items()
    }
    sizes = {i: node_size(object_info[node["class_type"]], titles[i]) for i, node in prompt.items()}
    placed = place(prompt, sizes)
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
        x, y, width = placed[node_id]
        nodes.append({
            "id": int(node_id),
            "type": node["class_type"],
            "pos": [x, y + TITLE],
            "size": [width, sizes[node_id][1]],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": inputs,
            "outputs": [],
            "title": titles[node_id],
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
