"""A screenshot of the ``nmt serve`` page for a run, the pointer on one attention cell.

    python scripts/serve_screenshot.py RUN_DIR docs/serve.png \\
        --text "Il fait froid ce matin, mais le soleil brille." --target "▁cold" --source "▁froid"

Starts ``nmt serve RUN_DIR`` on a free loopback port, opens the page at 1280×``--height`` (800) in Debian's
Chromium (Playwright, no network), translates ``--text``, hovers the cell of the target piece
``--target`` and the source piece ``--source`` (the first cell when they are not given or not
found), and writes the viewport to the output PNG. The server is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def cell_index(base: str, model: str, text: str, target: str | None, source: str | None) -> int:
    """The index of the (target, source) cell in the heatmap's row-major cells (0 if not found)."""
    body = json.dumps({"text": text, "model": model, "return_attention": True}).encode()
    req = urllib.request.Request(base + "/api/translate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        tr = json.load(r)["translations"][0]
    tokens, src = tr["hypotheses"][0]["tokens"], tr["src_tokens"]
    if target in tokens and source in src:
        return tokens.index(target) * len(src) + src.index(source)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("output")
    p.add_argument("--text", default="Il fait froid ce matin, mais le soleil brille.")
    p.add_argument("--target", help="target piece of the hovered cell, e.g. ▁cold")
    p.add_argument("--source", help="source piece of the hovered cell, e.g. ▁froid")
    p.add_argument("--height", type=int, default=800, help="viewport height (width 1280)")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    from bench_serve import running_server  # this directory's: start, wait for, stop nmt serve

    with running_server([args.run_dir, "--log-level", "warning"], None, time.monotonic() + 120) as base:
        model = Path(args.run_dir).resolve().name
        index = cell_index(base, model, args.text, args.target, args.source)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                         args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": args.height})
            page.goto(f"{base}/?text={urllib.parse.quote(args.text)}&model={urllib.parse.quote(model)}")
            page.wait_for_selector("svg.heatmap.attention rect.cell", timeout=60_000)
            page.locator("svg.heatmap.attention rect.cell").nth(index).hover()
            page.wait_for_timeout(300)
            page.screenshot(path=args.output)
            browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
