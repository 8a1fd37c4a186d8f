"""The bundle's web demo: ``web/index.html`` with a small script, running the TF.js model in a browser.

The page, its script and stylesheet live in ``export/web/`` and are copied into the bundle together with
TF.js itself (``tf.min.js`` from the npm package, so the page needs no CDN): serving the bundle folder
(``cd exports && python -m http.server``) and opening ``/web/`` works offline. The app's Try page embeds
the same page from the run's bundle (``?embedded=1#image=...``): one implementation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.host.exitcodes import UserError

SOURCE = Path(__file__).with_name("web")
TFJS_LIB = Path(__file__).resolve().parents[1] / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js"
FILES = ("index.html", "demo.js", "demo.css")


class WebDemoError(UserError, RuntimeError):
    """TF.js is not installed, so the demo page cannot be written."""


def write_demo(bundle: Path, model_folder: str = "tfjs") -> Path:
    """Writes ``bundle/web/`` (page, script, stylesheet, vendor/tf.min.js); returns the page's path.

    Raises:
        WebDemoError: node_modules has no @tensorflow/tfjs (run ``npm ci``).
    """
    if not TFJS_LIB.exists():
        raise WebDemoError(f"{TFJS_LIB} is missing: run `npm ci` in {TFJS_LIB.parents[3]} to install TF.js.")
    web = bundle / "web"
    (web / "vendor").mkdir(parents=True, exist_ok=True)
    for name in FILES:
        text = (SOURCE / name).read_text(encoding="utf-8")
        if name == "demo.js" and model_folder != "tfjs":
            text = text.replace("|| '../tfjs/'", f"|| '../{model_folder}/'")
        (web / name).write_text(text, encoding="utf-8")
    shutil.copy(TFJS_LIB, web / "vendor" / "tf.min.js")
    return web / "index.html"
