"""Check the built docs site in headless Chromium: every page loads without console errors, the plots load, links resolve.

The script serves the site folder on 127.0.0.1 (a free port), starts Chromium headless with a fresh profile and
drives it through the DevTools protocol over a websocket. For every HTML page of the site it checks:

- no console error, uncaught exception, failed request or HTTP error while the page loads;
- no request leaves 127.0.0.1 (such requests are blocked and reported: the site must work offline);
- every link to a page of the site returns 200 (a #fragment that names no element of the page is listed as a warning);
- every image on the page has loaded (naturalWidth > 0), and the results page shows at least --min-images.

It also checks that the index page links to every page, and, with --notebooks, that the notebooks' saved
outputs contain no progress bars, absolute paths or memory addresses. It can save a screenshot of the results
page. It ends with a line 'N passed, M failed' and exits with status 1 when a check failed.

    python tools/build_site.py && python tools/check_site.py --screenshot /tmp/results.png --notebooks nbs
"""
from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import websocket

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
                  "--no-default-browser-check", "--disable-dev-shm-usage", "--remote-debugging-port=0"]

PAGE_FACTS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete, naturalWidth: i.naturalWidth})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id).concat(Array.from(document.querySelectorAll('a[name]')).map(a => a.name)),
  title: document.title
})"""


class SiteCheckError(Exception):
    "The check could not run (no Chromium, no site); the message says what to install or build."


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    "Serve the site folder without logging every request to standard error."
    def log_message(self, format, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    "A server that ignores clients which close the connection early, as a browser does with a request it no longer needs."
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    "Serve `site` on 127.0.0.1 at a free port in a background thread; return the server and its base URL."
    server = QuietServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class Chromium:
    "A headless Chromium process with a fresh profile, driven over one DevTools websocket with one page session."

    def __init__(self, executable: str, width: int = 1280, height: int = 900, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="check_site_chromium_"))
        self.stderr = open(self.profile.parent / f"{self.profile.name}.log", "wb")  # shown when Chromium fails to start
        self.process = subprocess.Popen([executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=self.stderr, start_new_session=True)
        port_file, deadline = self.profile / "DevToolsActivePort", time.monotonic() + timeout
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                log_tail = Path(self.stderr.name).read_text(errors="replace")[-2000:]
                raise SiteCheckError(f"Chromium ({executable}) did not open its DevTools port within {timeout:.0f} s:\n{log_tail}")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True)
        self.next_id, self.events = 0, []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"): self.call(f"{domain}.enable", session=True)
        self.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session=True)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)
        self.allowed_origin = None

    def call(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        "Send one DevTools command and return its result, collecting the events that arrive meanwhile."
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session: message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = self._receive(deadline)
            if reply is not None and reply.get("id") == self.next_id:
                if "error" in reply: raise SiteCheckError(f"DevTools command {method} failed: {reply['error']}")
                return reply.get("result", {})
        raise SiteCheckError(f"DevTools command {method} timed out: no response within {self.timeout:.0f} s.")

    def _receive(self, deadline: float) -> dict | None:
        "Read one message; answer paused requests at once (local ones go on, others are blocked) and keep events."
        self.ws.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            message = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None
        if message.get("method") == "Fetch.requestPaused":
            params = message["params"]
            local = self.allowed_origin and params["request"]["url"].startswith(self.allowed_origin)
            if not local: self.events.append({"method": "blocked", "params": {"url": params["request"]["url"]}})
            self.ws.send(json.dumps({"id": 0, "sessionId": self.session,
                                     "method": "Fetch.continueRequest" if local else "Fetch.failRequest",
                                     "params": {"requestId": params["requestId"]} if local else
                                               {"requestId": params["requestId"], "errorReason": "BlockedByClient"}}))
            return None
        if "method" in message: self.events.append(message)
        return message

    def wait_for(self, method: str, seconds: float) -> bool:
        "Collect events until `method` arrives or `seconds` pass; return whether it arrived."
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(e.get("method") == method for e in self.events): return True
            self._receive(deadline)
        return any(e.get("method") == method for e in self.events)

    def settle(self, seconds: float) -> None:
        "Keep collecting events for `seconds`, for messages that come after the load event."
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline: self._receive(deadline)

    def open(self, url: str) -> dict:
        "Load `url`, wait for its load event, and return the page facts and the problems seen while loading."
        self.events = []
        self.call("Page.navigate", {"url": url}, session=True)
        loaded = self.wait_for("Page.loadEventFired", self.timeout)
        self.settle(0.5)
        facts = json.loads(self.call("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True},
                                     session=True)["result"]["value"])
        facts["problems"] = ([] if loaded else [f"no load event within {self.timeout:.0f} s"]) + page_problems(self.events)
        return facts

    def screenshot(self, path: Path, selector: str | None = None) -> None:
        "Save a PNG of the viewport, scrolled so that the first element matching `selector` is near the top."
        if selector:
            self.call("Runtime.evaluate", {"expression": f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                                                         "if (e) { e.scrollIntoView({block: 'start'}); window.scrollBy(0, -60); } })()"},
                      session=True)
            self.settle(0.3)
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        "Stop Chromium (its whole process group, which it started) and remove its profile."
        if getattr(self, "ws", None) is not None: self.ws.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.stderr.close()
        Path(self.stderr.name).unlink(missing_ok=True)
        shutil.rmtree(self.profile, ignore_errors=True)


def page_problems(events: list[dict]) -> list[str]:
    "Turn the DevTools events of one page load into messages: console errors, exceptions, failed or blocked requests."
    problems = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            problems.append("console error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails", {})
            problems.append(f"uncaught exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            problems.append(f"console error: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
        elif method == "Network.responseReceived" and p.get("response", {}).get("status", 200) >= 400:
            problems.append(f"HTTP {p['response']['status']} for {p['response']['url']}")
        elif method == "Network.loadingFailed" and p.get("errorText") != "net::ERR_BLOCKED_BY_CLIENT":
            problems.append(f"request failed: {p.get('errorText')}")
        elif method == "blocked":
            problems.append(f"request to a URL outside the site was blocked: {p['url']}")
    return problems


def status_of(url: str) -> int:
    "Return the HTTP status of a GET request to the local site server."
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def check_links(pages: dict[str, dict], base: str) -> tuple[list[str], list[str]]:
    "Check that every link to the site returns 200; return those problems, and the links whose #fragment names no element."
    problems, missing_fragments, statuses = [], [], {}
    for page, facts in pages.items():
        for href in facts["links"]:
            if not href.startswith(base): continue  # another site: not fetched, because the check runs offline
            url, fragment = urldefrag(href)
            if url not in statuses: statuses[url] = status_of(url)
            if statuses[url] != 200:
                problems.append(f"{page}: link {href[len(base):]} returns HTTP {statuses[url]}")
                continue
            target = urlsplit(url).path.lstrip("/") or "index.html"
            if fragment and target in pages and fragment not in pages[target]["ids"]:
                missing_fragments.append(f"{page}: link {href[len(base):]}: {target} has no element with id {fragment!r}")
    return problems, sorted(set(missing_fragments))


def check_notebooks(nbs: Path) -> list[str]:
    "List progress bars, absolute paths and memory addresses in the notebooks' saved outputs."
    from lora_tweets.results import find_output_noise
    return [f"{r.notebook} cell {r.cell}: {r.kind} in {r.count} output line(s), first: {r.line[:120]}"
            for r in find_output_noise(nbs).itertuples()]


def report(check: str, problems: list[str]) -> bool:
    "Print the outcome of one check with its problems, and return whether it passed."
    print(f"{'ok  ' if not problems else 'FAIL'} {check}" + "".join(f"\n     {p}" for p in problems))
    return not problems


def run_checks(site: Path, chromium: str, results_page: str, min_images: int, screenshot: Path | None,
               nbs: Path | None) -> tuple[int, int]:
    "Run all checks, print one line per check, and return the numbers of checks that passed and failed."
    pages = sorted(p.name for p in site.glob("*.html"))
    if "index.html" not in pages: raise SiteCheckError(f"{site} has no index.html; build the site first: python tools/build_site.py")
    if results_page not in pages: raise SiteCheckError(f"{site} has no {results_page}; pass --results-page with the page of the plots.")
    pages.remove("index.html")
    pages.insert(0, "index.html")
    server, base = serve(site)
    browser = Chromium(chromium)
    browser.allowed_origin = base
    results, seen = [], {}
    try:
        for page in pages:
            facts = seen[page] = browser.open(base + page)
            problems = list(facts["problems"])
            broken = [i["src"] for i in facts["images"] if not i["complete"] or i["naturalWidth"] == 0]
            problems += [f"image {src} did not load (naturalWidth 0)" for src in broken]
            if page == results_page and len(facts["images"]) < min_images:
                problems.append(f"shows {len(facts['images'])} images, expected at least {min_images} plots")
            if page == results_page and screenshot is not None: browser.screenshot(screenshot, "main img")
            results.append(report(f"{page}: {len(facts['images'])} images, {len(facts['links'])} links", problems))
        index_links = {urlsplit(h).path.lstrip("/") for h in seen["index.html"]["links"] if h.startswith(base)}
        unlinked = [p for p in pages if p not in index_links and p != "index.html"]
        link_problems, missing_fragments = check_links(seen, base)
        link_problems += [f"index.html does not link to {p}" for p in unlinked]
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
    results.append(report("links between pages", link_problems))
    # A missing fragment opens the right page at its top, in this site as in Quarto's, so it is reported, not failed.
    # nbdev links every backticked name in its symbol index, private ones too, and only public ones get a heading.
    if missing_fragments: print("warn links to a section that does not exist" + "".join(f"\n     {p}" for p in missing_fragments))
    if nbs is not None: results.append(report(f"saved outputs of the notebooks in {nbs}", check_notebooks(nbs)))
    return sum(results), len(results) - sum(results)


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", type=Path, default=root / "_site", help="folder of the built site (default: _site)")
    ap.add_argument("--chromium", default=None, help="Chromium executable (default: chromium, chromium-browser or google-chrome on PATH)")
    ap.add_argument("--results-page", default="results.html", help="page that must show the plots (default: results.html)")
    ap.add_argument("--min-images", type=int, default=5, help="number of plots the results page must show (default: 5)")
    ap.add_argument("--screenshot", type=Path, default=None, help="PNG file for a screenshot of the results page at its first plot")
    ap.add_argument("--notebooks", type=Path, default=None, help="also scan the saved outputs of the notebooks in this folder for noise")
    args = ap.parse_args(argv)
    chromium = args.chromium or next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
    if chromium is None:
        print("check_site: error: no Chromium found; install it (apt-get install -y chromium) or pass --chromium PATH.", file=sys.stderr)
        return 1
    try:
        passed, failed = run_checks(args.site, chromium, args.results_page, args.min_images, args.screenshot, args.notebooks)
    except SiteCheckError as e:
        print(f"check_site: error: {e}", file=sys.stderr)
        return 1
    if args.screenshot: print(f"screenshot of {args.results_page} written to {args.screenshot}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
