"""The data report in a real headless browser (Debian's `chromium`, installed by `make chromium`).

Every network request the browser makes goes to a recording proxy on 127.0.0.1 that answers 404,
so nothing can load from the network and any request the page makes is seen. Chromium itself
calls a few of its own Google service endpoints in the background (component updates, sign-in,
network time) whatever the page: those hosts are listed in BROWSER_OWN_HOSTS and left out; a
control page with an external image and stylesheet shows that page requests are caught.

Every ``<img>`` must have rendered: a copy of the page with a small inline script (the report
itself has none) writes each image's ``naturalWidth`` into the DOM on ``load``, and
``--dump-dom`` reads it back. The full-page screenshot is checked in a temporary folder;
with ``SEGBALANCE_UPDATE_DOCS=1`` it also replaces docs/report_screenshot.png, the picture the
README shows (a plain test run never writes into the checkout).
"""
import html
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from segbalance.pipeline.report import render_report
from tests.report_inputs import ANOMALY, NAMES, ODD_ID, write_report_inputs

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="chromium is not installed: `make chromium` (run by `make test`) installs it")

BROWSER_OWN_HOSTS = {"update.googleapis.com", "accounts.google.com", "clients2.google.com", "clients1.google.com",
                     "safebrowsing.googleapis.com", "optimizationguide-pa.googleapis.com", "redirector.gvt1.com",
                     "edgedl.me.gvt1.com", "content-autofill.googleapis.com"}
QUIET = ["--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
         "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter"]
WINDOW = (1280, 2400)
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "report_screenshot.png"
IMAGE_CHECK = """<script>window.addEventListener("load", () => {
  const out = document.createElement("pre"); out.id = "image-check";
  out.textContent = JSON.stringify({height: document.documentElement.scrollHeight,
    images: Array.from(document.images, i => [i.alt, i.naturalWidth, i.complete])});
  document.body.appendChild(out);
});</script>"""


class RecordingProxy:
    """Accepts proxy connections, records each request line ('GET http://host/...', 'CONNECT host:443'), 404s."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests = []
        self.silent = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    line = self._request_line(conn)
                    if line is None:  # closed before a byte was sent: one of Chromium's speculative
                        self.silent += 1  # preconnects to the proxy itself, which names no host
                        continue
                    self.requests.append(line)
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    @staticmethod
    def _request_line(conn):
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n")[0].decode("latin-1") if data else None

    def page_requests(self):
        hosts = [re.match(r"\S+ (?:\w+://)?([^/:\s]+)", line) for line in self.requests]
        return [line for line, host in zip(self.requests, hosts) if not host or host.group(1) not in BROWSER_OWN_HOSTS]

    def close(self):
        self.server.close()


@pytest.fixture
def browser(tmp_path):
    proxy = RecordingProxy()

    def run(*args):
        command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--proxy-server=127.0.0.1:{proxy.port}",
                   f"--user-data-dir={tmp_path / 'profile'}", *QUIET, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    yield run, proxy
    proxy.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    sources = write_report_inputs(tmp)
    return render_report(sources, str(tmp / "report.html")), sources


def test_control_page_requests_are_caught(browser, tmp_path):
    run, proxy = browser
    control = tmp_path / "control.html"
    control.write_text('<p>control</p><img src="http://example.invalid/a.png">'
                       '<link rel="stylesheet" href="https://cdn.example.invalid/b.css">')
    run("--dump-dom", control.as_uri())
    hosts = " ".join(proxy.page_requests())
    assert "example.invalid/a.png" in hosts and "cdn.example.invalid:443" in hosts
    # the naturalWidth check sees an image that does not decode
    broken = tmp_path / "broken.html"
    broken.write_text('<p>x</p><img alt="ok" src="data:image/png;base64,' + PIXEL + '">'
                      '<img alt="bad" src="data:image/png;base64,AAAA"></body>'.replace("</body>", IMAGE_CHECK))
    dom = run("--virtual-time-budget=10000", "--dump-dom", broken.as_uri())
    check = json.loads(html.unescape(re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S).group(1)))
    assert [(alt, width > 0) for alt, width, _ in check["images"]] == [("ok", True), ("bad", False)]


def test_report_renders_offline_with_its_content(browser, page, tmp_path):
    run, proxy = browser
    path, sources = page
    uri = "file://" + path
    dom = run("--dump-dom", uri)
    assert "<script" not in dom  # the class name below was not turned into an element
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))  # the text a reader sees
    for name in NAMES + [ODD_ID]:
        assert name in text, name
    stats = json.loads((Path(sources.class_stats_dir) / "class_stats.json").read_text())
    for scheme, weights in stats["weights"].items():
        assert f"{scheme} " + " ".join(f"{w:.4g}" for w in weights) in text, scheme
    assert ANOMALY in text and "Out-of-range values" in text
    page_images = re.findall(r'<img [^>]*src="data:image/(?:png|jpeg);base64,', dom)
    assert len(page_images) == len(re.findall(r"<img ", dom)) > 50  # charts and thumbnails, all inline

    checked = tmp_path / "checked.html"  # the page plus the inline naturalWidth check
    checked.write_text(Path(path).read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    dom = run("--virtual-time-budget=10000", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--dump-dom", checked.as_uri())
    check = json.loads(html.unescape(re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S).group(1)))
    assert len(check["images"]) == len(page_images)
    broken = [alt for alt, width, complete in check["images"] if not (complete and width > 0)]
    assert broken == []

    height = min(int(check["height"]) + 40, 16000)
    shot = tmp_path / "report.png"
    run(f"--screenshot={shot}", f"--window-size={WINDOW[0]},{height}", "--hide-scrollbars", uri)
    assert proxy.page_requests() == []  # none of the loads asked the network for anything

    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[:2] == (height, WINDOW[0])
    top = pixels[: WINDOW[1] // 2, :, :3]
    assert np.std(top) > 0.05 and (top.mean(axis=2) < 0.3).mean() > 0.005  # text and charts, not a blank page
    if os.environ.get("SEGBALANCE_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, SCREENSHOT)  # the README's picture of the report
