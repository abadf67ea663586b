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
import re

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
GAP_X, GAP_Y, BAND_GAP = 36, 30, 40
# The screen the layout is made for: the README's screenshots (tests/integration/test_browser.py)
# use this viewport and fit the graph in the part of it the frontend's menus leave free.
SCREEN = (1920, 1200)
FREE = (SCREEN[0] - 90, SCREEN[1] - 160)
FREE_AT = (70, 100)  # the top left corner of FREE: right of the sidebar, below the tabs and the Run bar
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


# Each node's stage: its group in the UI workflow. A class named here goes to that stage; "inputs":
# the latest stage of its inputs (a decode, a save follow what they decode or save); "users": the
# earliest stage of the nodes it feeds (a scheduler shared by inversion and sampling is the
# inversion's; the source latents are the tune's).
STAGE_OF_CLASS = {
    "LoadVideo": "source", "SmoothVideo_SelectVideoFrames": "source", "Canny": "source",
    "CheckpointLoaderSimple": "model", "CLIPTextEncode": "model", "SmoothVideo_InflateUNet": "model",
    "SmoothVideo_InflateControlVideo": "model", "ControlNetLoader": "model", "ControlNetApplyAdvanced": "model",
    "InstructPixToPixConditioning": "model", "SmoothVideo_CrossFrameAttention": "model",
    "SmoothVideo_SmoothNoise": "model",
    "SmoothVideo_OneShotTune": "tune",
    "SmoothVideo_DDIMInvertVideo": "invert",
    "SamplerCustom": "sample", "SamplerCustomAdvanced": "sample", "DualCFGGuider": "sample",
    "SmoothVideo_VLScore": "score", "ImageStitch": "score",
    "VAEEncode": "users", "BasicScheduler": "users", "KSamplerSelect": "users",
    "SmoothVideo_SameNoiseForAllFrames": "users", "SmoothVideo_SmoothNoiseSampler": "users",
    "VAEDecode": "inputs", "CreateVideo": "inputs", "SaveVideo": "inputs", "SaveImage": "inputs",
}
STAGES = {
    "source": ("Source: the clip's frames", "#3f789e"),
    "model": ("Model and prompts", "#8A8"),
    "tune": ("Tune on the clip", "#b06634"),
    "invert": ("Invert the clip (DDIM)", "#a1309b"),
    "sample": ("Sample the edit", "#b58b2a"),
    "score": ("Score and compare", "#88A"),
}
GROUP_TITLE, GROUP_PAD = 34, 10  # LiteGraph's group title bar (24 px font) and the room around the nodes
NOTE_WIDTHS = (380, 460, 540)


def stages_of(prompt: dict) -> dict[str, str]:
    """Each node's stage (a key of STAGES)."""
    users: dict[str, list[str]] = {i: [] for i in prompt}
    for i in prompt:
        for p in predecessors(prompt, i):
            users[p].append(i)
    order = list(STAGES)
    stage: dict[str, str] = {}

    def visit(node_id: str, seen=()) -> str:
        if node_id in stage:
            return stage[node_id]
        kind = prompt[node_id]["class_type"]
        if kind not in STAGE_OF_CLASS:
            raise ValueError(f"node {node_id}: no stage for {kind}: add it to STAGE_OF_CLASS")
        rule = STAGE_OF_CLASS[kind]
        if rule == "inputs":
            rule = max((visit(p) for p in predecessors(prompt, node_id)), key=order.index)
        elif rule == "users":
            rule = min((visit(u) for u in users[node_id]), key=order.index)
        stage[node_id] = rule
        return rule

    for node_id in prompt:
        visit(node_id)
    return stage


def note_height(text: str, width: int) -> int:
    """The height a Markdown Note needs for text at width: its lines wrapped in the 14 px font
    (headings larger), with the widget's margins."""
    height = 24
    for paragraph in text.strip().split("\n"):
        if not paragraph.strip():
            height += 8
            continue
        size = 20 if paragraph.startswith("#") else 14
        words = re.sub(r"[*`#]", "", paragraph).split()
        lines, line = 1, ""
        for word in words:
            candidate = f"{line} {word}".strip()
            if line and text_width(candidate, size) > width - 36:
                lines, line = lines + 1, word
            else:
                line = candidate
        height += lines * round(size * 1.5) + 4
    return int(-(-height // 10) * 10)


def stage_blocks(prompt: dict, sizes, note: str | None):
    """The blocks laid out in rows: the note (if any), then each stage's nodes, in STAGES order.
    Each block is (stage or None, its layout options); an option is (width, height, split
    columns, positions from its top left corner) with the group's frame included."""
    stage = stages_of(prompt)
    blocks = []
    if note is not None:
        blocks.append((None, [(w, note_height(note, w), 0, {}) for w in NOTE_WIDTHS]))
    for name in STAGES:
        members = [i for i in prompt if stage[i] == name]
        if not members:
            continue
        # The stage alone: links from other stages are drawn between the groups.
        sub = {i: {**prompt[i], "inputs": {k: v for k, v in prompt[i]["inputs"].items()
                                           if not isinstance(v, list) or v[0] in members}} for i in members}
        users: dict[str, list[str]] = {i: [] for i in sub}
        for i in sub:
            for p in predecessors(sub, i):
                users[p].append(i)
        columns = [c for layer in columns_of(sub) for c in layer]
        tallest = max(TITLE + sizes[i][1] for i in members)
        total = sum(TITLE + sizes[i][1] + GAP_Y for i in members)
        options, seen = [], set()
        for limit in sorted({tallest, total, *range(tallest - tallest % 50 + 50, total, 50)}):
            width, height, splits, placed = lay_band(columns, sizes, sub, users, limit)
            if (width, height, splits) in seen:
                continue
            seen.add((width, height, splits))
            framed = {i: (x + GROUP_PAD, y + GROUP_PAD + GROUP_TITLE, w) for i, (x, y, w) in placed.items()}
            options.append((width + 2 * GROUP_PAD, height + 2 * GROUP_PAD + GROUP_TITLE, splits, framed))
        blocks.append((name, options))
    return blocks


def place(prompt: dict, sizes: dict[str, tuple[int, int]], note: str | None = None):
    """Positions of the nodes (x, y of the title's top, width), of the note (x, y, width, height)
    and the groups (title, colour, [x, y, w, h]): each stage's nodes in a group of their own, the
    groups in STAGES order left to right, wrapped into up to MAX_BANDS rows, the note before any
    of them or after the last. Of the wrappings, the note's places and each block's layouts, the
    one that shows the whole graph on SCREEN at LEGIBLE_ZOOM (or as close as it gets) with the
    fewest split columns, then the largest zoom up to ENOUGH_ZOOM, then the fewest rows, then the
    note furthest left."""
    blocks = stage_blocks(prompt, sizes, note)
    note_block, stage_list = (blocks[0], blocks[1:]) if note is not None else (None, blocks)
    most = 1 + sum(max(o[2] for o in options) for _, options in stage_list)
    best = None
    for where in range(len(stage_list) + 1 if note_block else 1):
        order = stage_list[:where] + [note_block] + stage_list[where:] if note_block else stage_list
        n = len(order)
        for cut in (c for k in range(MAX_BANDS) for c in itertools.combinations(range(1, n), k)):
            rows = list(zip((0, *cut), (*cut, n)))
            for most_splits in range(most):
                allowed = [[o for o in options if o[2] <= most_splits] or [min(options, key=lambda o: o[2])]
                           for _, options in order]
                # Each row's layouts: for each height allowed, each block's narrowest layout no taller.
                frontiers = []
                for a, b in rows:
                    frontier = []
                    for height in sorted({o[1] for k in range(a, b) for o in allowed[k]}):
                        picks = [min((o for o in allowed[k] if o[1] <= height), key=lambda o: o[0], default=None)
                                 for k in range(a, b)]
                        if None not in picks:
                            width = sum(o[0] for o in picks) + GAP_X * (b - a - 1)
                            if not frontier or width < frontier[-1][1]:
                                frontier.append((height, width, picks))
                    frontiers.append(frontier)
                for widest in sorted({f[1] for frontier in frontiers for f in frontier}):
                    chosen = [next((f for f in frontier if f[1] <= widest), None) for frontier in frontiers]
                    if None in chosen:
                        continue
                    height = sum(f[0] for f in chosen) + BAND_GAP * (len(rows) - 1)
                    zoom = min(FREE[0] / (widest + 20), FREE[1] / (height + 20), 1.0)
                    splits = sum(o[2] for f in chosen for o in f[2])
                    key = (round(min(zoom, LEGIBLE_ZOOM), 2), -splits, round(min(zoom, ENOUGH_ZOOM), 2),
                           -len(rows), -where, zoom)
                    if best is None or key > best[0]:
                        best = (key, order, rows, chosen)
    _, order, rows, chosen = best
    placed, groups, note_box, top = {}, [], None, 0
    for (a, b), (row_height, _, picks) in zip(rows, chosen):
        left = 0
        for (name, _), (width, height, _, nodes) in zip(order[a:b], picks):
            if name is None:
                note_box = (left, top, width, height)
            else:
                title, colour = STAGES[name]
                groups.append((title, colour, [left, top, width, height]))
                placed.update({i: (left + x, top + y, w) for i, (x, y, w) in nodes.items()})
            left += width + GAP_X
        top += row_height + BAND_GAP
    return placed, note_box, groups


def api_to_ui(prompt: dict, object_info: dict, note: str | None = None) -> dict:
    depth = depth_of(prompt)
    titles = {
        i: node.get("_meta", {}).get("title", object_info[node["class_type"]].get("display_name", node["class_type"]))
        for i, node in prompt.items()
    }
    sizes = {i: node_size(object_info[node["class_type"]], titles[i]) for i, node in prompt.items()}
    placed, note_box, groups = place(prompt, sizes, note)
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
    boxes = [box for _, _, box in groups]
    if note_box is not None:
        # The frontend's Markdown Note: a page-only node (never queued), here beside the source.
        x, y, width, height = note_box
        boxes.append(list(note_box))
        nodes.append({
            "id": max(int(i) for i in prompt) + 1, "type": "MarkdownNote", "pos": [x, y + TITLE],
            "size": [width, height - TITLE], "flags": {}, "order": len(nodes), "mode": 0, "inputs": [],
            "outputs": [], "title": "Note: read me first", "properties": {}, "widgets_values": [note],
            "color": "#432", "bgcolor": "#653",
        })
    return {
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [
            {"id": n + 1, "title": title, "bounding": box, "color": colour, "font_size": 24, "flags": {}}
            for n, (title, colour, box) in enumerate(groups)
        ],
        "config": {},
        "extra": {"ds": opening_view(boxes)},
        "version": 0.4,
    }


def opening_view(boxes: list[list[int]]) -> dict:
    """The view the workflow opens at (LiteGraph's DragAndScale: page = (graph + offset) * scale):
    the whole graph centred in FREE at the largest zoom up to 100 % (2 decimals, rounded down)."""
    x0, y0 = min(b[0] for b in boxes) - 10, min(b[1] for b in boxes) - 10
    x1, y1 = max(b[0] + b[2] for b in boxes) + 10, max(b[1] + b[3] for b in boxes) + 10
    scale = min(FREE[0] / (x1 - x0), FREE[1] / (y1 - y0), 1.0) // 0.01 / 100
    offset = [FREE_AT[k] / scale + (FREE[k] / scale - (x1 - x0, y1 - y0)[k]) / 2 - (x0, y0)[k] for k in (0, 1)]
    return {"scale": scale, "offset": [round(v, 1) for v in offset]}


def build_all(object_info: dict) -> dict[pathlib.Path, str]:
    """Target path -> the UI workflow text for every API workflow, with its note
    (workflows/notes/NAME.md)."""
    built = {}
    for api in sorted((WORKFLOWS / "api").glob("*.json")):
        note = WORKFLOWS / "notes" / f"{api.stem}.md"
        if not note.exists():
            raise FileNotFoundError(f"{note.relative_to(REPO)} missing: every workflow has a note")
        ui = api_to_ui(json.loads(api.read_text()), object_info, note.read_text().strip())
        built[WORKFLOWS / api.name] = json.dumps(ui, indent=2) + "\n"
    return built


def main() -> None:
    with ComfyServer() as server:
        object_info = server.get("/object_info")
    for path, text in build_all(object_info).items():
        path.write_text(text)
        print(path.relative_to(REPO))


if __name__ == "__main__":
    main()
