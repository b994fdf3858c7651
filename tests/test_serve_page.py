"""The upload page in a real headless Chromium: pick a file, see the predicted label.

Drives Debian's ``chromium`` over the DevTools protocol (a few JSON messages on a
websocket, no browser-automation package needed). The ``chromium`` fixture (conftest.py)
installs it on a fresh machine where it may (root, apt-get), as the report's browser test
does. Set IMGCLS_SCREENSHOT_DIR to keep the screenshot.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from base64 import b64decode
from pathlib import Path

import pytest
from deploy_support import sample_image, trained_run  # noqa: F401 - fixtures

import imgcls
from imgcls.deploy.serve import create_app

websockets_sync = pytest.importorskip("websockets.sync.client")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-proxy-server", "--window-size=900,760", "--remote-debugging-port=0"]
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


class Server:
    """uvicorn on a loopback socket the OS picked, in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


class Browser:
    """A headless chromium and a DevTools-protocol session on its first page."""

    def __init__(self, chromium: str, profile: Path):
        self.stack = contextlib.ExitStack()
        self.process = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._devtools_port()
        targets = json.load(_LOCAL.open(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = self.stack.enter_context(
            websockets_sync.connect(page["webSocketDebuggerUrl"], max_size=None, proxy=None))
        self.next_id = 0

    def _devtools_port(self) -> int:
        deadline = time.time() + 30
        for line in self.process.stderr:
            if "DevTools listening on ws://" in line:
                return int(line.split("ws://")[1].split("/")[0].rsplit(":", 1)[1])
            if time.time() > deadline:
                break
        raise RuntimeError("chromium did not open its DevTools port")

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        shown = self.evaluate("document.getElementById('error').textContent")
        raise AssertionError(f"timed out waiting for {expression}; error shown on the page: {shown!r}")

    def close(self):
        self.stack.close()
        self.process.terminate()
        self.process.wait(10)


def test_pick_a_file_and_see_the_label(trained_run, chromium, tmp_path):
    model = imgcls.load(trained_run.checkpoint, device="cpu")
    image = sample_image(tmp_path / "upload" / "red_square.png", colour=(200, 40, 40), size=(240, 180))
    expected = model.predict([image])[0]["label"]
    with Server(create_app(model)) as server:
        browser = Browser(chromium, tmp_path / "profile")
        try:
            browser.call("Page.enable")
            browser.call("Page.navigate", url=server.url + "/")
            browser.wait_for("document.body && document.body.dataset.ready === '1'")
            assert "classes" in browser.evaluate("document.getElementById('model').textContent")
            root = browser.call("DOM.getDocument")["root"]["nodeId"]
            file_input = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
            browser.call("DOM.setFileInputFiles", nodeId=file_input, files=[str(image)])
            label = browser.wait_for("document.getElementById('label').textContent")
            browser.wait_for("document.getElementById('preview').naturalWidth > 0")
            bars = browser.evaluate("document.querySelectorAll('#bars .bar').length")
            assert browser.evaluate("canExplain") is True  # a checkpoint: the Grad-CAM overlay appears too
            browser.wait_for("document.getElementById('cam').naturalWidth > 0")
            shot = tmp_path / "upload-page.png"
            shot.write_bytes(b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
        finally:
            browser.close()
    assert label == expected == "red"
    assert bars == 3  # top-k over 3 classes
    assert shot.stat().st_size > 5000
    if os.environ.get("IMGCLS_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["IMGCLS_SCREENSHOT_DIR"]) / shot.name)
