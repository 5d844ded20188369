"""A real browser for the tests: headless Chromium driven over the DevTools protocol through a pipe
(``--remote-debugging-pipe``: commands on fd 3, replies on fd 4, JSON messages ended by a NUL byte),
so no extra package and no network port is needed.

Why the protocol rather than ``--enable-logging`` or ``--dump-dom``: the log prints console
messages without their level (an ``console.error`` cannot be told from a warning) and misses a
file that failed to load, and ``--dump-dom`` cannot say whether a WebGL canvas drew anything. The
protocol reports uncaught exceptions (``Runtime.exceptionThrown``), console calls with their type
(``Runtime.consoleAPICalled``), browser log entries such as a missing script
(``Log.entryAdded``) and every request the page makes (``Network.requestWillBeSent``), evaluates JavaScript in the page, and captures screenshots of any region.

``python -m tests.report.browser PAGE.html OUT.png [SECTION]`` saves a 1200x900 screenshot of a
page (the README's figure), quantised to a small PNG.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        exe = find_chromium()
        if exe is None:
            raise FileNotFoundError("no chromium on PATH")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="recon-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # in the child: the protocol's pipes on fds 3 and 4
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                "--remote-debugging-pipe", "--hide-scrollbars", "--no-first-run", "--no-default-browser-check",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=wire_fds, pass_fds=(3, 4),
                                     close_fds=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session = None
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            os.close(self._to_browser)
        except OSError:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)

    # --- the protocol -----------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            if time.time() > deadline:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], 0.5)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe (it exited)")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.time() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: Optional[float] = None) -> dict:
        deadline = time.time() + (timeout or self.timeout)
        for event in self.events:
            if event["method"] == method:
                return event
        while True:
            event = self._read_message(deadline)
            if "method" in event:
                self.events.append(event)
                if event["method"] == method:
                    return event

    # --- what the tests use --------------------------------------------------------------------

    def open(self, url: str, settle_s: float = 1.0) -> None:
        """Load ``url``, wait for its load event, then ``settle_s`` for late drawing (WebGL)."""
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.settle(settle_s)

    def settle(self, seconds: float) -> None:
        """Let the page draw for ``seconds``, collecting its events meanwhile."""
        end = time.time() + seconds
        while time.time() < end:
            self.evaluate("1")
            time.sleep(0.1)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error / console.assert calls and browser log errors so far."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(f"uncaught: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                          for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log error ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        return found

    def requests(self) -> list[str]:
        """Every URL the page asked for so far (scripts, pictures, video, ...; data: URLs left out)."""
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"
                and not e["params"]["request"]["url"].startswith("data:")]

    def screenshot(self, clip: Optional[dict] = None) -> np.ndarray:
        """What the window shows (or ``clip``: x, y, width, height in page pixels) as an (H, W, 3)
        uint8 array."""
        import imageio.v3 as iio

        if clip is None:  # the scrolled window (a plain capture would show the top of the page)
            clip = self.evaluate("({x: scrollX, y: scrollY, width: innerWidth, height: innerHeight})")
        params = {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}}
        data = self.call("Page.captureScreenshot", **params)["data"]
        return np.asarray(iio.imread(io.BytesIO(base64.b64decode(data))))[..., :3]


def pixel_stats(img: np.ndarray) -> dict:
    """How much a picture shows: its distinct colours and the fraction of pixels that are not
    (near) white, the plots' background."""
    pixels = img.reshape(-1, img.shape[-1])
    return {"colours": int(len(np.unique(pixels, axis=0))),
            "non_white": float(np.mean(pixels.min(1) < 235))}


def save_small_png(img: np.ndarray, path: Path, colours: int = 128) -> int:
    """A quantised PNG (an adaptive palette keeps screenshots ~100 KB); returns its size in bytes."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)
    return path.stat().st_size


def main(argv: list[str]) -> int:
    """PAGE OUT [SECTION]: a 1200x900 screenshot of PAGE, scrolled to the section SECTION (an id
    such as ``poses``, ``nerf``, ``surface``) when given."""
    page, out = Path(argv[0]).resolve(), Path(argv[1])
    with Browser(1200, 900) as browser:
        browser.open(page.as_uri(), settle_s=2.0)
        if len(argv) > 2:
            browser.evaluate(f"document.getElementById({json.dumps(argv[2])}).scrollIntoView()")
            browser.settle(1.0)
        for error in browser.errors():
            print(f"page error: {error}", file=sys.stderr)
        size = save_small_png(browser.screenshot(), out)
    print(f"{out}: {size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
