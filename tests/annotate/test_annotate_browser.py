"""The annotation page in a real browser: headless Chromium driven through the DevTools
protocol (a websocket, with aiohttp; no driver binary). The test clicks a point on a generated
image, waits for the mask overlay, picks a non-empty candidate, accepts it, refines a second
mask with the brush, and checks the annotation file on disk.

Without Chromium the test skips and names the binaries it looked for; ``SAM_CHROMIUM`` may
point at one. CI installs it with ``apt-get install -y --no-install-recommends chromium``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from sam_lightning import ops
from sam_lightning.data import read_image
from sam_lightning.inference.predictor import SamPredictor

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``$SAM_CHROMIUM`` or the first of :data:`BROWSERS` on PATH."""
    if os.environ.get("SAM_CHROMIUM"):
        return shutil.which(os.environ["SAM_CHROMIUM"])
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class DevTools:
    """A minimal DevTools protocol client for one page; JavaScript errors are collected."""

    def __init__(self, websocket_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []
        self._id = 0
        self.session = self.loop.run_until_complete(self._session())
        self.ws = self.loop.run_until_complete(
            self.session.ws_connect(websocket_url, max_msg_size=0)
        )
        self.send("Runtime.enable")
        self.send("Page.enable")

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), timeout=60)
            if message.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(message["params"]["exceptionDetails"])[:500])
            if message.get("method") == "Runtime.consoleAPICalled":
                if message["params"]["type"] == "error":
                    self.errors.append(json.dumps(message["params"]["args"])[:500])
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.loop.run_until_complete(self._call(method, params))

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        while time.monotonic() < deadline:
            value = self.evaluate(guarded)  # false while the page is still loading
            if value:
                return value
            time.sleep(0.05)
        status = self.evaluate("document.body.dataset.status + ': ' + $('status').textContent")
        raise TimeoutError(f"timed out waiting for {expression} (page: {status})")

    def click(self, x: float, y: float, button: str = "left") -> None:
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, clickCount=1,
                buttons=1 if kind == "mousePressed" else 0,
            )  # fmt: skip

    def key(self, key: str, code: str, key_code: int) -> None:
        text = key if len(key) == 1 else ""
        self.send("Input.dispatchKeyEvent", type="keyDown", key=key, code=code,
                  windowsVirtualKeyCode=key_code, text=text)  # fmt: skip
        self.send("Input.dispatchKeyEvent", type="keyUp", key=key, code=code,
                  windowsVirtualKeyCode=key_code)  # fmt: skip

    def close(self) -> None:
        self.loop.run_until_complete(self.ws.close())
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


@pytest.fixture
def browser(tmp_path: Path):
    """A headless Chromium; yields a DevTools client of its page."""
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            f"headless Chromium not found (looked for {', '.join(BROWSERS)} on PATH and "
            "$SAM_CHROMIUM): apt-get install -y --no-install-recommends chromium"
        )
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [
            binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=900,700",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{binary} did not start: {process.communicate()[1][-2000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        client = DevTools(_page_websocket(port))
        yield client
    finally:
        if client is not None:
            client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _page_websocket(port: int) -> str:
    async def targets() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                return await response.json()

    for _ in range(100):
        pages = [t for t in asyncio.run(targets()) if t["type"] == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.05)
    raise RuntimeError("Chromium has no page target")


def canvas_pixels(page: DevTools) -> np.ndarray:
    """The canvas (image resolution) as H x W x 4 uint8."""
    width, height, data = page.evaluate(
        "(() => { const c = $('canvas');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " return [c.width, c.height, Array.from(d)]; })()"
    )
    return np.array(data, dtype=np.uint8).reshape(height, width, 4)


def client_point(page: DevTools, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of image pixel (x, y)."""
    left, top, width, height, w, h = page.evaluate(
        "(() => { const c = $('canvas'); const r = c.getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height, c.width, c.height]; })()"
    )
    return left + x * width / w, top + y * height / h


def candidate_areas(page: DevTools) -> list[int]:
    texts = page.evaluate(
        "Array.from(document.querySelectorAll('#candidates button'), b => b.textContent)"
    )
    return [int(text.split("·")[1].split()[0]) for text in texts]


def test_click_decode_accept_and_refine(browser, make_tool, serve, images, tmp_path, model):
    page = browser
    _, client = serve(make_tool())
    page.send("Page.navigate", url=client.url)
    page.wait_for("document.body.dataset.status === 'ready'")
    assert page.evaluate("$('image-list').options.length") == 3
    before = canvas_pixels(page)
    np.testing.assert_array_equal(before[..., :3], read_image(images / "a.png"))

    # a left click is an object point: three candidates come back and one is drawn
    page.click(*client_point(page, 20.5, 15.5))
    page.wait_for("document.body.dataset.status === 'mask'")
    areas = candidate_areas(page)
    assert len(areas) == 3
    pick = max(range(3), key=lambda k: (0 < areas[k] < 48 * 64, areas[k]))
    page.key(str(pick + 1), f"Digit{pick + 1}", 49 + pick)
    page.wait_for(
        f"document.querySelectorAll('#candidates button')[{pick}].classList.contains('active')"
    )
    shown = canvas_pixels(page)
    assert (shown != before).any(axis=2).sum() >= areas[pick] > 0  # the overlay is drawn
    page.key("Enter", "Enter", 13)
    page.wait_for("document.body.dataset.status === 'saved'")

    document = json.loads((tmp_path / "out" / "a.json").read_text())
    (saved,) = document["annotations"]
    assert saved["source"] == "person" and saved["candidate"] == pick
    assert saved["refined"] is False and saved["seconds"] > 0
    (point,) = saved["prompts"]["points"]
    assert point[2] == 1 and abs(point[0] - 20.5) <= 0.2 and abs(point[1] - 15.5) <= 0.2
    assert saved["prompts"]["box"] is None
    predictor = SamPredictor(model)
    predictor.set_image(read_image(images / "a.png"))
    masks, _, _ = predictor.predict(np.array([point[:2]]), np.array([1]))
    np.testing.assert_array_equal(ops.rle_decode(saved["segmentation"])[0].numpy(), masks[pick])
    # the saved mask stays drawn, the current one is cleared
    after = canvas_pixels(page)
    np.testing.assert_array_equal((after != before).any(axis=2), masks[pick])

    # a second mask: a click, then a brush stroke; the refined mask is what gets saved
    page.click(*client_point(page, 40.5, 30.5))
    page.wait_for("document.body.dataset.status === 'mask'")
    page.key("b", "KeyB", 66)
    page.click(*client_point(page, 56, 40))
    page.key("Enter", "Enter", 13)
    page.wait_for("document.querySelectorAll('#saved li').length === 2")
    second = json.loads((tmp_path / "out" / "a.json").read_text())["annotations"][1]
    assert second["refined"] is True and second["candidate"] is not None
    (point,) = second["prompts"]["points"]
    candidate = predictor.predict(np.array([point[:2]]), np.array([1]))[0][second["candidate"]]
    mask = ops.rle_decode(second["segmentation"])[0].numpy().astype(bool)
    yy, xx = np.mgrid[:48, :64] + 0.5
    distance = np.hypot(xx - 56, yy - 40)
    assert mask[distance <= 9].all()  # the brush disc (radius 10) is in
    assert (mask <= (candidate | (distance <= 11))).all()  # nothing else was added
    assert (candidate <= mask).all()

    # reopening the image draws its saved masks
    page.send("Page.reload")
    page.wait_for("document.body.dataset.status === 'ready'")
    assert page.evaluate("document.querySelectorAll('#saved li').length") == 2
    assert page.errors == []
