"""Screenshots of `segdiff serve` for the docs: docs/serve-predict.png and docs/serve-eval.png.

    python scripts/screenshots.py [--demo segdiff-demo] [--out docs]

Uses the folder of `segdiff demo` (made first when it is missing, without the demo's time cap, so that the
model is the one the demo trains on a free machine: about 5 minutes on 2 CPU cores);
its run for the predict page, its evaluation (metrics.json) and test images for the evaluation browser.
Drives the system's headless Chromium with Selenium, set up as tests/test_serve.py sets it up
(segdiff.serve.browser; needs the dev extra and chromium + chromedriver).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from PIL import Image

from segdiff.serve.browser import headless_chromium
from segdiff.serve.browser import wait_for as _wait_for


def wait_for(driver, script: str):
    return _wait_for(driver, script, timeout=300.0, poll=0.1)


def save(driver, path: Path, width: int) -> None:
    """The whole page as a palette PNG (small enough to commit)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, height + 160)  # the window's own frame takes part of its height
    time.sleep(0.3)
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image = image.crop((0, 0, image.width, min(image.height, height + 10)))
    image = image.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("segdiff-demo"), help="segdiff demo folder (made if missing)")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--width", type=int, default=1250)
    ap.add_argument("--images", type=int, default=2, help="test images to upload on the predict page")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: no oversubscription)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from segdiff.api import SegDiff
    from segdiff.serve.app import create_app
    from segdiff.serve.evalbrowser import EvalIndex
    from segdiff.serve.server import ServerThread, allowed_hosts

    demo = args.demo
    if not (demo / "metrics.json").is_file():
        from segdiff.demo import run_demo

        print(f"{demo}/metrics.json not found: running segdiff demo --out {demo} first")
        run_demo(demo, max_minutes=None, progress=True)  # no time cap: the model the demo means on any machine
    model = SegDiff.load(demo / "run")
    evaluation = EvalIndex(demo / "metrics.json", demo / "data" / "test")
    app = create_app(model, evaluation, allowed_hosts=allowed_hosts("127.0.0.1", 0), run_name=demo.name + "/run")
    server = ServerThread(app).start()
    try:
        driver = headless_chromium(args.width, 900, extra_args=("--hide-scrollbars",))
    except RuntimeError as exc:  # no chromium or chromedriver
        server.stop()
        sys.exit(str(exc))
    try:
        driver.get(server.url + "/#predict")
        wait_for(driver, "return document.body.dataset.ready === '1'")
        uploads = sorted((demo / "data" / "test" / "images").iterdir())[: args.images]
        driver.find_element("id", "files").send_keys("\n".join(str(p.resolve()) for p in uploads))
        driver.find_element("id", "submit").click()
        wait_for(driver, "const j = document.querySelector('.job'); return j && j.dataset.state === 'done'")
        wait_for(driver, "return [...document.querySelectorAll('.job img')].every(i => i.complete)")
        save(driver, args.out / "serve-predict.png", args.width)

        driver.set_window_size(args.width, 900)
        driver.get(server.url + "/#eval")
        wait_for(driver, "return document.querySelectorAll('#eval-table tbody tr').length > 0")
        driver.find_element("css selector", "th[data-key=iou]").click()  # worst first
        driver.find_element("css selector", "#eval-table tbody tr").click()
        wait_for(driver, "return [...document.querySelectorAll('#eval-panels img')].every(i => i.complete)")
        driver.execute_script("window.scrollTo(0, 0)")
        save(driver, args.out / "serve-eval.png", args.width)
    finally:
        driver.quit()
        server.stop()


if __name__ == "__main__":
    main()
