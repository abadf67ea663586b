"""Renders docs/icon.svg (the pack's icon, [tool.comfy] Icon in pyproject.toml) to docs/icon.png.

The registry and ComfyUI-Manager show the PNG; the SVG is its source. Drawn by Debian's
Chromium through Playwright, as the browser test does: `.host/venv/bin/python scripts/render_icon.py`.
"""

from __future__ import annotations

import io
import pathlib

from PIL import Image
from playwright.sync_api import sync_playwright

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
SIZE = 400  # the registry's largest icon: 400 x 400


def main() -> None:
    svg = (DOCS / "icon.svg").read_text()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": SIZE, "height": SIZE})
            page.set_content(f"<body style='margin:0;background:transparent'>{svg}</body>")
            png = page.locator("svg").screenshot(omit_background=True)
        finally:
            browser.close()
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.size == (SIZE, SIZE), picture.size
        picture.save(DOCS / "icon.png", optimize=True)
    print(DOCS / "icon.png")


if __name__ == "__main__":
    main()
