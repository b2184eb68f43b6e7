"""The report in a real browser: headless Chromium (Debian ``chromium``) opens report.html through the
DevTools protocol and finds no console errors, no network access, every image decoded and the sections
in order; then a full-page screenshot is saved. Skipped, with the reason, when chromium is missing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_report_upstream import SECTION_IDS, make_report_run


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_report_run(tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _cdp_console_errors(ws_url: str, page_url: str) -> dict[str, Any]:
    """Open ``page_url`` over the DevTools protocol; collect console errors, exceptions and requests."""
    import asyncio

    import aiohttp

    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        seq = 0

        async def call(method: str, **params: Any) -> dict[str, Any]:
            nonlocal seq
            seq += 1
            my = seq
            await ws.send_json({"id": my, "method": method, "params": params})
            while True:
                msg = await asyncio.wait_for(ws.receive_json(), 30)
                if msg.get("id") == my:
                    return msg
                events.append(msg)

        for domain in ("Runtime", "Log", "Network", "Page"):
            await call(f"{domain}.enable")
        await call("Page.navigate", url=page_url)
        deadline = time.monotonic() + 30
        loaded = False
        while time.monotonic() < deadline:
            try:
                msg = await asyncio.wait_for(ws.receive_json(), 2)
            except TimeoutError:
                if loaded:
                    break
                continue
            events.append(msg)
            loaded = loaded or msg.get("method") == "Page.loadEventFired"
        res = await call(
            "Runtime.evaluate",
            expression="JSON.stringify({imgs: [...document.images].map(i => [i.complete, i.naturalWidth]),"
            " sections: [...document.querySelectorAll('section')].map(s => s.id),"
            " height: document.documentElement.scrollHeight})",
            returnByValue=True,
        )
    errors = []
    requests = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            errors.append(f"console.{p['type']}: {p.get('args')}")
        elif method == "Runtime.exceptionThrown":
            errors.append(f"exception: {p.get('exceptionDetails')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            errors.append(f"network: {p.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            requests.append(p["request"]["url"])
    return {
        "errors": errors,
        "requests": requests,
        "page": json.loads(res["result"]["result"]["value"]),
        "loaded": loaded,
    }


@pytest.mark.slow
@pytest.mark.skipif(
    _chromium() is None, reason="chromium is not installed (Debian: apt-get install -y chromium)"
)
def test_html_in_headless_chromium(report_run: dict[str, Any], tmp_path: Path) -> None:
    """The report opens in a real browser with no console errors, no network access, every image
    decoded and the sections in order; then a full-page screenshot is saved (in the test's tmp folder,
    and copied to $DAPT_SCREENSHOT_DIR when set: the stage's output folder is not the test's to write)."""
    import asyncio
    import urllib.request

    exe = _chromium()
    assert exe is not None
    html = report_run["dir"] / "report.html"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ]
    # 1. console errors, network requests and the rendered page through the DevTools protocol
    port = _free_port()
    with open(tmp_path / "chromium.log", "wb") as log:
        browser = subprocess.Popen(
            [
                exe,
                *flags,
                f"--user-data-dir={tmp_path / 'profile-cdp'}",
                f"--remote-debugging-port={port}",
                "--remote-debugging-address=127.0.0.1",
                "--window-size=1200,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            targets = None
            for _ in range(150):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                        targets = [t for t in json.load(r) if t.get("type") == "page"]
                    if targets:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            assert targets, "chromium DevTools endpoint did not come up"
            got = asyncio.run(_cdp_console_errors(targets[0]["webSocketDebuggerUrl"], html.as_uri()))
        finally:
            browser.terminate()
            try:
                browser.wait(timeout=20)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait()
    assert got["loaded"]
    assert got["errors"] == []
    assert all(u.startswith(("file:", "data:")) for u in got["requests"]), got["requests"]
    assert got["page"]["sections"][: len(SECTION_IDS)] == SECTION_IDS
    imgs = got["page"]["imgs"]
    assert len(imgs) >= 7 and all(ok and w > 100 for ok, w in imgs)

    # 2. a screenshot of the whole page (window as tall as the rendered document)
    height = int(got["page"]["height"]) + 40
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            exe,
            *flags,
            f"--user-data-dir={tmp_path / 'profile-shot'}",
            f"--screenshot={shot}",
            f"--window-size=1200,{height}",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    assert int.from_bytes(png[20:24], "big") == height  # IHDR height: the whole report is in the picture
    if os.environ.get("DAPT_SCREENSHOT_DIR"):
        out = Path(os.environ["DAPT_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "report.png")
