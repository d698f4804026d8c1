"""Headless Chromium for the tests that look at pages: the report at common widths, the MLflow UI.

`chromium` (session fixture) finds Debian's `chromium` (PATH, then /usr/bin/chromium), installs it
with apt-get when it is missing (CI runs on a fresh machine, as root), and skips with the reason
when it cannot be installed (not root, no package source). `Page` drives one tab over the DevTools
protocol (a websocket, through aiohttp, which MLflow already requires): load a URL at a window
size, evaluate JavaScript in it, wait for a condition. Only loopback is reachable: every other
address goes to a proxy that does not exist.

Import the fixture into a test module: `from chromium import chromium  # noqa: F401`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from pg import apt_install

def find_chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def ensure_installed() -> str:
    return apt_install("chromium", find_chromium, pytest.skip)  # a browser check is skipped, not failed, without one


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of the chromium executable (installed with apt-get when missing)."""
    return ensure_installed()


def launch_args(exe: str, profile: Path) -> list[str]:
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost", f"--user-data-dir={profile}"]


class Page:
    """One headless Chromium tab, driven over the DevTools protocol."""

    def __init__(self, exe: str, timeout: float = 60):
        self.profile = Path(tempfile.mkdtemp(prefix="alignbench-chromium-"))
        self.proc = subprocess.Popen([*launch_args(exe, self.profile), "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file, deadline = self.profile / "DevToolsActivePort", time.time() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        self.loop = asyncio.new_event_loop()
        self.ids = itertools.count(1)
        self.session, self.ws = self.loop.run_until_complete(self._connect(target["webSocketDebuggerUrl"]))

    async def _connect(self, url: str):
        import aiohttp

        session = aiohttp.ClientSession()
        return session, await session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict):
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            reply = await self.ws.receive_json(timeout=120)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def call(self, method: str, **params):
        return self.loop.run_until_complete(self._call(method, params))

    def goto(self, url: str, width: int = 1400, height: int = 900, settle: float = 0.0) -> None:
        """Load `url` in a `width` x `height` window (the layout viewport)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.enable")
        self.call("Page.setBypassCSP", enabled=True)  # lets `evaluate` run in the report, whose CSP forbids scripts
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", 60)
        time.sleep(settle)

    def evaluate(self, expression: str):
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression[:80]}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, every: float = 0.25):
        """The first truthy value of `expression`; raises after `timeout` seconds with the page's text."""
        deadline = time.time() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.time() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 3000) : ''")
                raise AssertionError(f"timed out after {timeout} s waiting for {expression!r}; the page reads:\n{text}")
            time.sleep(every)

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
            self.loop.close()
            self.ws = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Elements whose box reaches past the right edge of the viewport, excluding what a scrolling box
# (overflow-x auto/scroll/hidden) clips: [(tag#id.class, right edge px), ...], the widest first.
OVERFLOWING_JS = """(() => {
  const vw = document.documentElement.clientWidth, out = [];
  const clipped = el => { for (let a = el.parentElement; a; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX; if (o !== 'visible' && a !== document.documentElement && a !== document.body) return true; }
    return false; };
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > vw + 1 && !clipped(el))
      out.push([el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ').join('.') : ''), Math.round(r.right)]);
  }
  return out.sort((a, b) => b[1] - a[1]).slice(0, 10);
})()"""
