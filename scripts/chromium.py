"""A small driver for a real headless Chromium over its DevTools protocol (for the review-page and preview tests
and scripts/screenshots.py). Debian's `chromium` is enough: no chromedriver, no Playwright browser download.

    with Chromium() as browser:
        browser.open("file:///…/index.html")
        browser.evaluate("document.querySelectorAll('.card').length")
        browser.screenshot("docs/report.png", width=1280, height=900)
        assert not browser.console_errors

The websocket client is aiohttp's (already installed with ray[default]); its event loop runs on a thread so
the calls here are plain blocking calls.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class BrowserError(RuntimeError):
    pass


class Chromium:
    def __init__(self, *, width: int = 1280, height: int = 900, timeout: float = 30.0):
        if CHROMIUM is None:
            raise BrowserError("no chromium on PATH (Debian: apt-get install -y chromium)")
        self.width, self.height, self.timeout = width, height, timeout
        self.console_errors: list[str] = []
        self.console: list[str] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._waiters: list[tuple[str, asyncio.Future]] = []

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        self._process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             "--allow-file-access-from-files", "--autoplay-policy=no-user-gesture-required",
             f"--user-data-dir={self._profile}", "--remote-debugging-port=0", f"--window-size={self.width},{self.height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = self._debugging_port()
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
            self._run(self._connect(port))
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            if getattr(self, "_session", None) is not None:
                self._run(self._close())
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5)
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _debugging_port(self) -> int:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self._process.poll() is not None:
                raise BrowserError(f"chromium exited with status {self._process.returncode}")
            time.sleep(0.05)
        raise BrowserError("chromium did not open its DevTools port")

    # -- protocol --------------------------------------------------------------------------
    def _run(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout or self.timeout)

    async def _connect(self, port: int) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self._socket = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())

    async def _close(self) -> None:
        self._reader.cancel()
        await self._socket.close()
        await self._session.close()

    async def _read(self) -> None:
        async for message in self._socket:
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future and not future.done():
                    future.set_result(data)
                continue
            self._on_event(data["method"], data.get("params", {}))
            for waiter in list(self._waiters):
                if waiter[0] == data["method"] and not waiter[1].done():
                    waiter[1].set_result(data.get("params", {}))
                    self._waiters.remove(waiter)

    def _on_event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"{params['type']}: {text}")
            if params["type"] in ("error", "assert"):
                self.console_errors.append(text)
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console_errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.console_errors.append(f"{params['entry'].get('source')}: {params['entry']['text']} {params['entry'].get('url', '')}")

    async def _send(self, method: str, params: dict) -> dict:
        message_id = next(self._ids)
        future = self._loop.create_future()
        self._pending[message_id] = future
        await self._socket.send_str(json.dumps(dict(id=message_id, method=method, params=params)))
        return await future

    def send(self, method: str, **params) -> dict:
        reply = self._run(self._send(method, params))
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def _wait_event(self, method: str) -> dict:
        future = self._loop.create_future()
        self._waiters.append((method, future))
        return await future

    # -- conveniences ----------------------------------------------------------------------
    def open(self, url: str, *, wait_for: str | None = None) -> None:
        """Navigate and wait for the load event (and, if given, until the JS expression is truthy)."""
        loaded = asyncio.run_coroutine_threadsafe(self._wait_event("Page.loadEventFired"), self._loop)
        self.send("Page.navigate", url=url)
        loaded.result(self.timeout)
        if wait_for:
            self.wait_until(wait_for)

    def evaluate(self, expression: str):
        """The value of a JS expression (promises awaited); page exceptions raise BrowserError."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(result["exceptionDetails"].get("exception", {}).get("description") or str(result["exceptionDetails"]))
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float | None = None, interval: float = 0.1):
        deadline = time.monotonic() + (timeout or self.timeout)
        # A DOM node comes back by value as {} (falsy here): count a found element as true.
        probe = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"
        while True:
            value = self.evaluate(probe)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for: {expression}")
            time.sleep(interval)

    def set_files(self, selector: str, paths: list[str | os.PathLike]) -> None:
        """Put local files into an <input type=file> (as a user's file chooser would)."""
        document = self.send("DOM.getDocument", depth=-1, pierce=True)
        node = self.send("DOM.querySelector", nodeId=document["root"]["nodeId"], selector=selector)["nodeId"]
        if not node:
            raise BrowserError(f"no element matches {selector!r}")
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(Path(p).resolve()) for p in paths])

    def screenshot(self, path: str | os.PathLike, *, full_page: bool = False) -> Path:
        params = dict(format="png", captureBeyondViewport=full_page)
        if full_page:
            width, height = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = dict(x=0, y=0, width=width, height=height, scale=1)
        data = self.send("Page.captureScreenshot", **params)["data"]
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(data))
        return target
