"""The pack in a real browser: Debian's headless Chromium opens ComfyUI's frontend, loads every
UI workflow the way a user does (templates menu, file drop), and runs one from the page.

Driven by Playwright's Python package with the system Chromium (no browser download). The only
skip: no /usr/bin/chromium, which scripts/setup_host.sh installs with apt-get when it can.
A screenshot of each loaded graph is kept in docs/screenshots/ for the README (SCREEN-sized, at a
zoom where the canvas draws text), and a small JPEG of it next to the workflow, workflows/NAME.jpg,
as the thumbnail of the templates menu.
"""

import hashlib
import io
import json
import pathlib
import re
import shutil
import urllib.parse

import pytest
from PIL import Image, PngImagePlugin
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from build_ui_workflows import FREE, FREE_AT, SCREEN, STAGES, stages_of
from comfy_host import HOSTS, load_workflow
from quick_settings import TINY

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
SCREENSHOTS = REPO / "docs" / "screenshots"  # the README's, taken on the newest host (its frontend)
CHROMIUM = pathlib.Path("/usr/bin/chromium")
# Headless, and nothing but the page's own connections: this machine refuses all others.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PACK = "ComfyUI-SmoothVideo"
# A modal dialog: PrimeVue's .p-dialog up to frontend 1.41; 1.48 draws its own, with the same role.
DIALOG = ".p-dialog, [role=dialog]"
# What reports a problem: dialogs and error toasts; in 1.48 also its error overlay (a missing node, model).
PROBLEMS = ".p-dialog, .p-toast-message-error, [data-testid=error-overlay]"
# The screenshots and thumbnails are the newest host's (its frontend is what users see first).
NEWEST_HOST = list(HOSTS)[-1]
THUMBNAIL_WIDTH = 400
pytestmark = [pytest.mark.integration, pytest.mark.every_host]


@pytest.fixture(scope="module")
def page(host, server, sample_video):
    """The frontend, ready, in a SCREEN-sized page; the sample clip is in input/ before it loads.
    The newest host's screenshots are the README's and its thumbnails the templates menu's (both
    committed); another host's frontend draws them a little differently, so its screenshots are
    kept in its host folder as evidence and the committed thumbnails are only read."""
    # The clip the workflows name, in input/ as the demo puts it there: frontend 1.48 marks a Load
    # Video whose file is not in input/ as an error (as it does a missing model).
    for name in {node["inputs"]["file"] for path in WORKFLOWS for node in load_workflow(path.stem).values()
                 if node["class_type"] == "LoadVideo"}:
        shutil.copyfile(server.base / "input" / sample_video[0], server.base / "input" / name)
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): scripts/setup_host.sh installs it "
                    "with apt-get (log in .host/chromium-install.log); without it the browser test cannot run")
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": SCREEN[0], "height": SCREEN[1]})
            tab.on("pageerror", lambda error: errors.append(str(error)))
            # The "Nodes 2.0" banner is dismissed per browser (localStorage); it would cover the menu.
            tab.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
            tab.goto(server.url)
            tab.wait_for_function(
                "!!(window.app?.graph && window.app.extensionManager?.workflow"
                " && window.LiteGraph?.registered_node_types['SmoothVideo_VLScore'])",
                timeout=60_000,
            )
            # A first start shows the templates browser (a moment after the graph is ready); close it
            # like a user would.
            try:
                tab.locator(DIALOG).first.wait_for(timeout=5_000)
            except PlaywrightTimeout:
                pass
            if tab.locator(DIALOG).count():
                tab.locator(DIALOG).locator("button:has(i.pi-times)").first.click()
                tab.locator(DIALOG).first.wait_for(state="detached")
            # Settings live in the host's user/ folder (.host/base/user), not in the browser.
            tab.evaluate("""async () => {
                const settings = window.app.extensionManager.setting;
                await settings.set('Comfy.Workflow.ShowMissingNodesWarning', true);
                // Cleaner screenshots: no minimap over the graph, no FPS counter.
                await settings.set('Comfy.Minimap.Visible', false);
                await settings.set('Comfy.Graph.CanvasInfo', false);
            }""")
            tab.page_errors = errors
            newest = host[0] == NEWEST_HOST
            tab.screenshots = SCREENSHOTS if newest else host[1] / "screenshots"
            tab.writes_thumbnails = newest
            yield tab
        finally:
            browser.close()


def visible_problems(page) -> list[str]:
    """Texts of the open dialogs (missing nodes, errors) and error toasts."""
    return page.evaluate("""(problems) => [...document.querySelectorAll(problems)]
        .map((el) => el.innerText.trim().slice(0, 500))""", PROBLEMS)


def drop_file(page, name: str, text: str) -> None:
    """Drops a .json file on the canvas, as a user dragging it from their file manager."""
    transfer = page.evaluate_handle(
        "([name, text]) => { const dt = new DataTransfer();"
        " dt.items.add(new File([text], name, {type: 'application/json'})); return dt; }",
        [name, text],
    )
    page.dispatch_event("#graph-canvas", "drop", {"dataTransfer": transfer})


def wait_until_open(page, name: str, node_count: int) -> None:
    """Waits for the tab NAME (or "NAME (2)" when NAME is already open) holding node_count nodes."""
    page.wait_for_function(
        "([name, count]) => window.app.extensionManager.workflow.activeWorkflow?.filename"
        ".replace(/ \\(\\d+\\)$/, '') === name && window.app.graph.nodes.length === count",
        arg=[name, node_count],
        timeout=15_000,
    )


def fit_graph(page) -> dict:
    """Zooms and centres the graph in the part of the page the menus leave free (as the "." key
    does, without its wide margin), at most at 100 %. Returns the zoom and the graph's rectangle
    on the page."""
    return page.evaluate("""([left, top, width, height]) => {
        const canvas = window.app.canvas, ds = canvas.ds;
        const box = [Infinity, Infinity, -Infinity, -Infinity];
        const groups = window.app.graph.groups ?? window.app.graph._groups ?? [];
        for (const [x, y, w, h] of [...window.app.graph.nodes.map((n) => n.boundingRect), ...groups.map((g) => g.boundingRect ?? g._bounding)]) {
            box[0] = Math.min(box[0], x - 10); box[1] = Math.min(box[1], y - 10);
            box[2] = Math.max(box[2], x + w + 10); box[3] = Math.max(box[3], y + h + 10);
        }
        const [w, h] = [box[2] - box[0], box[3] - box[1]];
        ds.changeScale(Math.min(width / w, height / h, 1), [0, 0]);
        const zoom = ds.scale;
        ds.offset[0] = left / zoom + (width / zoom - w) / 2 - box[0];
        ds.offset[1] = top / zoom + (height / zoom - h) / 2 - box[1];
        canvas.setDirty(true, true);
        const [x0, y0] = ds.convertOffsetToCanvas([box[0], box[1]]);
        return {zoom, rect: [x0, y0, x0 + w * zoom, y0 + h * zoom]};
    }""", [*FREE_AT, *FREE])


def keep_screenshot(page, name: str, workflow_text: str, thumbnail: pathlib.Path | None = None) -> dict:
    """Fits the graph in view and saves docs/screenshots/NAME.png, and a small JPEG of the graph
    as the thumbnail the templates menu shows (workflows/NAME.jpg) when one is asked for.

    The PNG carries the workflow it shows (as loaded) in a "workflow" text chunk, as ComfyUI's
    own PNGs do, so dropping it on ComfyUI opens that workflow; and the frontend version; a kept
    file is rewritten only when one of them changed, so test runs do not churn the committed
    pictures with sub-pixel differences. The thumbnail is made from the kept PNG and carries the
    hash of the same stamp in its comment. Returns fit_graph's answer and the PNG's path.
    """
    # Node sizes settle once video previews have their first frame (or failed: no such file in
    # input/) and the canvas has drawn.
    page.wait_for_function(
        "window.app.graph.nodes.filter((n) => n.widgets?.some((w) => w.name === 'video-preview')).length"
        " <= [...document.querySelectorAll('video')].filter((v) => v.readyState >= 2 || v.error).length",
        timeout=10_000,
    )
    settle = "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
    page.evaluate(settle)
    view = fit_graph(page)
    page.mouse.move(SCREEN[0] // 2, SCREEN[1] - 15)  # below the graph: no node is hovered
    page.evaluate(settle)
    png = page.screenshot()
    # Whether the canvas drew the nodes in low quality (no text: too far out), as of that frame.
    view["low_quality"] = page.evaluate("window.app.canvas.low_quality")

    stamp = {"workflow": workflow_text, "comfyui-frontend": page.evaluate("window.__COMFYUI_FRONTEND_VERSION__")}
    path = page.screenshots / f"{name}.png"
    kept = False
    if path.exists():
        with Image.open(path) as old:
            kept = all(old.text.get(key) == value for key, value in stamp.items())
    if not kept:
        info = PngImagePlugin.PngInfo()
        for key, value in stamp.items():
            info.add_text(key, value)
        path.parent.mkdir(parents=True, exist_ok=True)
        # 256 colours: the same picture to the eye, and a third of the bytes.
        with Image.open(io.BytesIO(png)) as picture:
            picture = picture.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            picture.save(path, pnginfo=info, optimize=True)
    if thumbnail is not None:
        digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest().encode()
        current = False
        if thumbnail.exists():
            with Image.open(thumbnail) as old:
                current = old.info.get("comment") == digest
        if not current:
            x0, y0, x1, y1 = view["rect"]
            with Image.open(path) as picture:
                graph = picture.convert("RGB").crop((max(0, round(x0)), max(0, round(y0)),
                                                     min(SCREEN[0], round(x1)), min(SCREEN[1], round(y1))))
            graph.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH), Image.Resampling.LANCZOS)
            graph.save(thumbnail, "JPEG", quality=85, optimize=True, comment=digest)
    return {**view, "path": path}


def browser_prompt(page) -> dict:
    """What the page would send to POST /prompt for the open graph."""
    return page.evaluate("async () => (await window.app.graphToPrompt()).output")


def test_the_pack_web_extension_is_loaded(page):
    names = page.evaluate("window.app.extensions.map((e) => e.name)")
    assert "SmoothVideo.ShowText" in names
    assert not page.page_errors, page.page_errors


def test_templates_menu_lists_every_workflow_with_its_thumbnail(page):
    # A card shows workflows/NAME.jpg (keep_screenshot below writes it): the frontend fetches
    # /api/workflow_templates/<pack folder>/NAME.jpg, which ComfyUI serves from the pack's workflows/.
    prefix = f"/api/workflow_templates/{PACK}/"
    thumbnails = {}

    def on_response(response):
        path = urllib.parse.urlparse(response.url).path
        if path.startswith(prefix) and path.endswith(".jpg"):
            thumbnails[path.removeprefix(prefix).removesuffix(".jpg")] = response.status

    page.on("response", on_response)
    page.evaluate("window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator(DIALOG)
    dialog.get_by_text(PACK, exact=True).first.click()
    cards = dialog.locator("[data-testid^='template-workflow-']")
    cards.first.wait_for()
    listed = {card.get_attribute("data-testid").removeprefix("template-workflow-") for card in cards.all()}
    first = cards.first.get_attribute("data-testid").removeprefix("template-workflow-")
    cards.first.locator("img").wait_for()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=cards.first.locator("img").element_handle())
    shown = cards.first.locator("img").evaluate("(img) => img.naturalWidth")
    page.remove_listener("response", on_response)
    dialog.locator("button:has(i.pi-times)").first.click()
    dialog.wait_for(state="detached")
    assert listed == {path.stem for path in WORKFLOWS}
    assert thumbnails.get(first) == 200 and shown == THUMBNAIL_WIDTH, (first, thumbnails, shown)
    assert set(thumbnails.values()) == {200}, thumbnails


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_dropped_workflow_opens_with_every_node_and_widget(page, path):
    workflow = json.loads(path.read_text())
    types = sorted({node["type"] for node in workflow["nodes"]})
    drop_file(page, path.name, path.read_text())
    wait_until_open(page, path.stem, len(workflow["nodes"]))
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")

    # It opens at its own view (extra.ds): all of it on the page, at a zoom where the canvas draws text.
    opened = page.evaluate("""() => {
        const canvas = window.app.canvas, ds = canvas.ds, groups = window.app.graph.groups ?? window.app.graph._groups;
        const rects = [...window.app.graph.nodes.map((n) => n.boundingRect), ...groups.map((g) => g.boundingRect ?? g._bounding)];
        const corners = rects.map(([x, y, w, h]) => [...ds.convertOffsetToCanvas([x, y]), ...ds.convertOffsetToCanvas([x + w, y + h])]);
        const page = canvas.canvas.getBoundingClientRect();
        return {scale: ds.scale, low_quality: canvas.low_quality, page: [page.left, page.top],
                box: [Math.min(...corners.map((c) => c[0])), Math.min(...corners.map((c) => c[1])),
                      Math.max(...corners.map((c) => c[2])), Math.max(...corners.map((c) => c[3]))]};
    }""")
    left, top = opened["page"][0] + opened["box"][0], opened["page"][1] + opened["box"][1]
    right, bottom = opened["page"][0] + opened["box"][2], opened["page"][1] + opened["box"][3]
    assert opened["scale"] == pytest.approx(workflow["extra"]["ds"]["scale"]) and opened["scale"] >= 0.6, opened
    assert FREE_AT[0] <= left and right <= FREE_AT[0] + FREE[0] and FREE_AT[1] <= top and bottom <= FREE_AT[1] + FREE[1], opened

    # A group per stage, holding that stage's nodes as the frontend counts them; the note in none.
    groups = page.evaluate("""() => (window.app.graph.groups ?? window.app.graph._groups).map((g) => {
        g.recomputeInsideNodes();
        return [g.title, [...(g.nodes ?? g._nodes)].map((n) => Number(n.id)).sort((a, b) => a - b)];
    })""")
    expected: dict[str, list[int]] = {}
    for node_id, stage in sorted(stages_of(load_workflow(path.stem)).items(), key=lambda item: int(item[0])):
        expected.setdefault(STAGES[stage][0], []).append(int(node_id))
    assert dict(groups) == expected and len(groups) == len(expected)
    notes = [node for node in workflow["nodes"] if node["type"] == "MarkdownNote"]
    assert len(notes) == 1 and notes[0]["widgets_values"][0].startswith("## ")

    registered = page.evaluate("Object.keys(window.LiteGraph.registered_node_types)")
    assert set(types) <= set(registered), f"not registered in the page: {set(types) - set(registered)}"
    assert page.evaluate("window.app.graph.nodes.filter((n) => n.has_errors).map((n) => n.type)") == []
    assert visible_problems(page) == []
    assert page.evaluate("window.app.graph.links.size") == len(workflow["links"])

    # Every widget holds the value of the API twin: what the page would queue is that workflow.
    api_twin = REPO / "workflows" / "api" / path.name
    if api_twin.exists():
        queued = browser_prompt(page)
        for node_id, node in load_workflow(path.stem).items():
            assert queued[node_id]["class_type"] == node["class_type"]
            for name, value in node["inputs"].items():
                assert queued[node_id]["inputs"].get(name) == value, f"node {node_id} ({node['class_type']}) input {name}"

    shot = keep_screenshot(page, path.stem, path.read_text(),
                           thumbnail=path.with_suffix(".jpg") if page.writes_thumbnails else None)
    # Readable: the whole graph at a zoom where the canvas draws titles and widgets.
    assert shot["zoom"] >= 0.6 and not shot["low_quality"], shot
    assert shot["path"].stat().st_size < 400_000
    assert path.with_suffix(".jpg").stat().st_size < 60_000
    # Laid out without overlaps, at the sizes the frontend gives the nodes.
    rects = page.evaluate("window.app.graph.nodes.map((n) => [n.id, ...n.boundingRect])")
    overlaps = [(a[0], b[0]) for n, a in enumerate(rects) for b in rects[n + 1:]
                if a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]]
    assert overlaps == [], f"overlapping nodes: {overlaps}"
    # Wide enough for their titles (the canvas cuts a longer one short with "...").
    cut_short = page.evaluate("""() => {
        const context = document.createElement('canvas').getContext('2d'), { LiteGraph } = window;
        context.font = `${LiteGraph.NODE_TEXT_SIZE}px ${LiteGraph.NODE_FONT}`;
        return window.app.graph.nodes.filter((n) => context.measureText(n.title).width
            > n.size[0] - 2 * LiteGraph.NODE_TITLE_HEIGHT).map((n) => n.title);
    }""")
    assert cut_short == []
    assert not page.page_errors, page.page_errors


def test_vl_score_queued_from_the_page_shows_its_score_on_the_node(page, server, sample_video):
    # Open it from the templates menu, as a user new to the pack would.
    page.evaluate("window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator(DIALOG)
    dialog.get_by_text(PACK, exact=True).first.click()
    dialog.locator("[data-testid='template-workflow-vl_score']").click()
    dialog.wait_for(state="detached")
    wait_until_open(page, "vl_score", len(json.loads((REPO / "workflows" / "vl_score.json").read_text())["nodes"]))

    # The small run: the test clip, 4 frames of 80 px.
    settings = {"LoadVideo": {"file": sample_video[0]}, **TINY}
    page.evaluate("""(settings) => {
        for (const node of window.app.graph.nodes) {
            for (const [name, value] of Object.entries(settings[node.type] ?? {})) {
                const widget = node.widgets.find((w) => w.name === name);
                if (widget.options.values && !widget.options.values.includes(value))
                    throw new Error(`${value} is not a choice of ${node.type}.${name}`);
                widget.value = value;
            }
        }
    }""", settings)
    with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as response:
        # The Run button (frontend 1.41 also names its queue-mode menu "Run"; both carry this test id).
        page.get_by_test_id("queue-button").click()
    assert response.value.ok, response.value.text()
    prompt_id = response.value.json()["prompt_id"]
    entry = server.wait(prompt_id, timeout=120)

    score_node = next(node_id for node_id, node in load_workflow("vl_score").items()
                      if node["class_type"] == "SmoothVideo_VLScore")
    ui = entry["outputs"][score_node]
    assert -1.0 <= ui["vl_score"][0] <= 1.0
    assert ui["text"][0].startswith(f"VL score: {ui['vl_score'][0]:.4f} (4 frames, k=8)")
    # web/smoothvideo.js shows the same text on the node.
    page.wait_for_function(
        "([id, text]) => window.app.graph.getNodeById(id).widgets"
        ".find((w) => w.name === 'smoothvideo_result')?.value === text",
        arg=[int(score_node), ui["text"][0]],
        timeout=15_000,
    )
    assert visible_problems(page) == []
    keep_screenshot(page, "vl_score_run", (REPO / "workflows" / "vl_score.json").read_text())
    assert not page.page_errors, page.page_errors


def test_a_workflow_with_an_unknown_node_shows_the_missing_nodes_dialog(page):
    # The check above is only worth something if the page does report missing nodes.
    workflow = json.loads((REPO / "workflows" / "vl_score.json").read_text())
    workflow["nodes"][0]["type"] = "NoSuchNode_FromAnUninstalledPack"
    drop_file(page, "unknown_node.json", json.dumps(workflow))
    page.locator(PROBLEMS).get_by_text("NoSuchNode_FromAnUninstalledPack").first.wait_for(timeout=15_000)
    # "...missing nodes" (a dialog, up to 1.41), "Missing node: ..." (1.48's error overlay)
    assert any(re.search("missing node", text, re.IGNORECASE) for text in visible_problems(page))
    assert page.evaluate("window.app.graph.nodes.filter((n) => n.has_errors).map((n) => n.type)") == [
        "NoSuchNode_FromAnUninstalledPack"
    ]
    page.keyboard.press("Escape")
