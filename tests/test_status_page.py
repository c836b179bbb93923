"""The master's live status page (``GET /``): the packaged document and its
Content-Security-Policy, the route on a real master, and the page itself in a real headless
browser (Debian's ``chromium`` driven through ``chromedriver`` by Selenium).

The browser test is skipped, with the reason, only where chromium, chromedriver or Selenium
are missing (a developer machine without root); ``.ci/run`` installs them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

# tests/ is not a package, so pytest puts tests/ itself on sys.path.
from processes import (
    HOST,
    Process,
    free_ports,
    publish,
    start_master,
    wait_until,
    worker_command,
)
from replication.http.page import (
    StatusPageError,
    content_security_policy,
    load_status_page,
)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _directives(policy: str) -> dict[str, list[str]]:
    return {part.split()[0]: part.split()[1:] for part in policy.split("; ")}


# -- the document and its policy -----------------------------------------------------------


def test_policy_allows_exactly_the_pages_own_inline_script_and_style() -> None:
    """The policy's script-src and style-src are the SHA-256 hashes of the packaged page's
    one inline <script> and one <style>; everything else is 'none' but connect-src 'self'."""
    page = load_status_page()
    html = page.body.decode()
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    directives = _directives(page.content_security_policy)
    assert directives == {
        "default-src": ["'none'"],
        "script-src": [_sha256(script)],
        "style-src": [_sha256(style)],
        "connect-src": ["'self'"],
        "img-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
    }


def test_policy_changes_when_the_script_changes() -> None:
    """A different script text gets a different hash: an edited page is never served under
    a stale policy."""
    one = content_security_policy("<script>poll()</script>")
    two = content_security_policy("<script>poll() </script>")
    assert _directives(one)["script-src"] != _directives(two)["script-src"]
    assert _directives(one)["style-src"] == ["'none'"]


@pytest.mark.parametrize("html", [
    "<p>no script</p>",
    '<script src="x.js"></script>',
    "<script>a()</script><script type=module>b()</script>",
    "<script>a()</script><style media=print>p{}</style>",
])
def test_a_page_the_policy_cannot_describe_is_refused(html: str) -> None:
    """A page without an inline script, or with a <script> or <style> carrying attributes
    (an external script, a module), is refused rather than served with a wrong policy."""
    with pytest.raises(StatusPageError):
        content_security_policy(html)


def test_page_has_no_external_assets_and_builds_no_markup_from_strings() -> None:
    """The document loads nothing but /status (no src, href, url() or absolute URLs) and its
    script never parses strings as markup (innerHTML and friends), so values from /status
    can only ever become text."""
    html = load_status_page().body.decode()
    for needle in ("src=", "href=", "url(", "http://", "https://", "@import"):
        assert needle not in html, needle
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in html, sink


# -- the route on a real master ------------------------------------------------------------


def _get(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    import http.client

    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_master_serves_the_page_at_the_root_with_its_policy(tmp_path: Path) -> None:
    """GET / answers the packaged page as UTF-8 HTML with the strict policy, nosniff and no
    referrer; HEAD / answers the same headers without a body; POST / is a JSON 405."""
    port, http_port = free_ports(2)
    page = load_status_page()
    with start_master(tmp_path, "master", port, http_port):
        status, headers, body = _get(http_port, "GET", "/")
        assert status == 200
        assert body == page.body
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["content-security-policy"] == page.content_security_policy
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"

        status, headers, body = _get(http_port, "HEAD", "/")
        assert (status, body) == (200, b"")
        assert headers["content-security-policy"] == page.content_security_policy

        status, headers, body = _get(http_port, "POST", "/")
        assert status == 405
        assert headers["content-type"] == "application/json"
        assert headers["allow"] == "GET, HEAD"


# -- the page in a headless browser --------------------------------------------------------

EVIL_WORKER = "<img/src=x/onerror=window.pwned=1>"


def _missing(reason: str) -> NoReturn:
    """Skip for ``reason`` on a developer machine; fail where ``.ci/run`` has set
    ``REPLICATION_REQUIRE_BROWSER`` (it installs the browser, so missing it is a CI fault)."""
    if os.environ.get("REPLICATION_REQUIRE_BROWSER"):
        pytest.fail(f"{reason}, and REPLICATION_REQUIRE_BROWSER is set")
    pytest.skip(reason)


def _browser_or_skip() -> Any:
    """A headless chromium driven by chromedriver, or skip with the reason."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        _missing("chromium and chromedriver are not installed "
                 "(apt-get install chromium chromium-driver; .ci/run does it)")
    try:
        from selenium import webdriver
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,720"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = _browser_or_skip()
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any, selector: str) -> str | None:
    """The text of the first element ``selector`` matches, or None; read in one script,
    since the page replaces its elements every second."""
    text: str | None = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        selector,
    )
    return text


def _texts(driver: Any, selector: str) -> list[str]:
    """The texts of every element ``selector`` matches, read in one script."""
    texts: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), (e) => e.textContent);",
        selector,
    )
    return texts


def _banner(driver: Any) -> str | None:
    """The error banner's text while it is shown, else None."""
    text: str | None = driver.execute_script(
        "const b = document.getElementById('banner');"
        "return getComputedStyle(b).display === 'none' ? null : b.textContent;"
    )
    return text


def test_page_follows_a_published_row_shows_workers_and_reports_a_lost_master(
    tmp_path: Path, browser: Any
) -> None:
    """In a real browser the page shows the stream's head, and within a few seconds of a row
    published over HTTP the new head and a non-zero rate; it lists a connected worker whose
    name is markup as plain text (no element is created from it, nothing runs); when the
    master goes away it shows "cannot reach the master" and keeps retrying, and clears the
    banner once a master answers again. The policy blocks nothing the page needs."""
    port, http_port = free_ports(2)
    url = f"http://{HOST}:{http_port}/"
    with start_master(tmp_path, "master", port, http_port) as master:
        publish(http_port, "events", [{"n": 1}])
        worker = Process(
            "worker",
            worker_command(port, EVIL_WORKER, tmp_path / "positions"),
            stdout=tmp_path / "worker.out",
            stderr=tmp_path / "worker.err",
            cwd=tmp_path,
        )
        with worker:
            browser.get(url)
            wait_until(lambda: _text(browser, 'tr[data-stream="events"] td.head') == "1", 10,
                       "the page to show events at head 1", alive=[master])
            wait_until(lambda: _text(browser, "#connections td.worker") == EVIL_WORKER, 10,
                       "the page to list the worker by its literal name", alive=[master, worker])

            publish(http_port, "events", [{"n": 2}, {"n": 3}])
            wait_until(lambda: _text(browser, 'tr[data-stream="events"] td.head') == "2", 5,
                       "the page to show events at head 2 after a publish", alive=[master])
            rate = _text(browser, 'tr[data-stream="events"] td.rate')
            assert rate is not None and rate != "-" and float(rate.removesuffix("/s")) > 0, rate
            assert _banner(browser) is None

            assert _texts(browser, "#sections img") == []
            assert browser.execute_script("return window.pwned === undefined") is True
            shot = tmp_path / "status-page.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
            master.kill()

            banner = wait_until(lambda: _banner(browser), 5, "the error banner")
            assert banner.startswith("cannot reach the master"), banner
            assert _text(browser, 'tr[data-stream="events"] td.head') == "2"  # last known, dimmed
            browser.save_screenshot(str(tmp_path / "status-page-lost.png"))

        with start_master(tmp_path, "master-again", port, http_port) as again:
            wait_until(lambda: _banner(browser) is None, 10, "the banner to clear", alive=[again])
            # The memory store starts empty: the page shows the new master's (no) streams.
            wait_until(lambda: _text(browser, "#streams .empty") == "no streams yet", 5,
                       "the new master's empty stream list", alive=[again])

    errors = [
        entry["message"] for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE"
        and "favicon.ico" not in entry["message"]
        and "/status" not in entry["message"]  # the polls that failed while the master was away
    ]
    assert errors == [], errors


# -- the page against a scripted /status ---------------------------------------------------

MARKUP = '<b class="injected">{}</b><script>window.pwned=1</script>'


class ScriptedMaster:
    """An HTTP server on 127.0.0.1 that serves the packaged page (with its headers) at ``/``
    and, at ``/status``, the answers given to :meth:`answer` in turn (the last one again
    once they run out): ``(status code, JSON document)``."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.answers: list[tuple[int, Any]] = [(503, {"error": "not yet"})]
        self.requests = 0
        page = load_status_page()
        scripted = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's hook
                if self.path == "/":
                    code, headers, body = 200, page.headers(), page.body
                else:
                    scripted.requests += 1
                    code, document = (scripted.answers.pop(0) if len(scripted.answers) > 1
                                      else scripted.answers[0])
                    headers = {b"content-type": b"application/json"}
                    body = json.dumps(document).encode()
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name.decode(), value.decode())
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *answers: tuple[int, Any]) -> None:
        self.answers = list(answers)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _status(now: float, head: int, rows: int, text: str) -> dict[str, Any]:
    """A /status document at ``now`` with one stream at ``head`` and every string a peer or
    operator could choose set to markup built from ``text``."""
    return {
        "server_name": MARKUP.format(text + "-server"), "origin_id": MARKUP.format("origin"),
        "fingerprint": MARKUP.format("fp"), "version": MARKUP.format("version"),
        "now": now, "started_at": now - 90, "uptime_seconds": 90.0,
        "limits": {"max_buffer_bytes": 1024},
        "streams": [{"name": "events", "head": head, "oldest": 1, "retained_rows": rows,
                     "rows_published": rows}],
        "connections": [{
            "worker": MARKUP.format(text + "-worker"), "address": MARKUP.format("address"),
            "connected_since": now - 30, "connected_seconds": 30.0, "all_streams": False,
            "streams": [{"name": MARKUP.format("feed"), "position": head - 7, "lag": 7,
                         "live": False, "handled": head - 9, "handled_lag": 9}],
            "buffered_bytes": 3 * 1024 * 1024,
        }],
        "workers": [{
            "name": MARKUP.format(text + "-worker"), "connected": 1, "connects": 3,
            "disconnects": {MARKUP.format("reason"): 2},
            "last_disconnect_reason": MARKUP.format("reason"), "last_disconnect_at": now - 60,
        }],
    }


@pytest.fixture
def scripted() -> Iterator[ScriptedMaster]:
    server = ScriptedMaster()
    try:
        yield server
    finally:
        server.close()


def test_page_shows_status_strings_as_text_rates_per_second_and_error_answers(
    scripted: ScriptedMaster, browser: Any
) -> None:
    """Against a scripted /status: a 503 answer shows the banner with the status code; then
    every string of the document, each a piece of markup with a script, appears as its own
    literal text and creates no element and runs nothing; two answers one second apart with
    the head 0 then 50 and rows 0 then 200 show 50.0/s and 200/s; a document that is not a
    status object shows the banner again, keeping the last data on the page."""
    browser.get(scripted.url)
    banner = wait_until(lambda: _banner(browser), 5, "the banner for a 503")
    assert banner.startswith("cannot reach the master") and "answered 503" in banner, banner

    scripted.answer(
        (200, _status(1000.0, 0, 0, "first")), (200, _status(1001.0, 50, 200, "second"))
    )
    wait_until(lambda: _text(browser, 'tr[data-stream="events"] td.head') == "50", 5,
               "the second answer on the page")
    assert _banner(browser) is None
    cells = _texts(browser, 'tr[data-stream="events"] td')
    assert cells == ["events", "50", "1", "200", "50.0/s", "200/s"]

    page_text = browser.execute_script("return document.body.textContent")
    for text in ("second-server", "second-worker", "address", "feed", "reason", "origin", "fp",
                 "version"):
        assert MARKUP.format(text) in page_text, text
    assert _text(browser, "#connections td.worker") == MARKUP.format("second-worker")
    assert "3.0 MiB" in page_text and "lag 7" in page_text
    assert "handled 41 (lag 9)" in page_text
    assert _texts(browser, ".injected") == []
    assert len(_texts(browser, "script")) == 1
    assert browser.execute_script("return window.pwned === undefined") is True

    scripted.answer((200, ["not", "a", "status"]))
    banner = wait_until(lambda: _banner(browser), 5, "the banner for a malformed document")
    assert banner.startswith("cannot reach the master"), banner
    assert _text(browser, 'tr[data-stream="events"] td.head') == "50"


def _cluster_status(now: float) -> dict[str, Any]:
    """A /status document of a master of a cluster: two origins of one stream, a peer
    connection, and three entries (self, connected, backing off with a problem); the peer's
    announced name and the problem are markup."""
    own, other = "OwnOriginOwnOriginOw01", "PeerOriginPeerOrigin02"
    status = _status(now, 5, 5, "cluster")
    status["origin_id"] = own
    status["streams"] = [
        {"name": "events", "origin": own, "local": True, "head": 5, "oldest": 1,
         "retained_rows": 5, "rows_published": 5},
        {"name": "events", "origin": other, "local": False, "head": 7, "oldest": 1,
         "retained_rows": 7, "rows_published": 7},
    ]
    status["connections"][0].update(role="peer", origin=other, rows_sent=10)
    status["connections"][0]["streams"] = [
        {"name": f"events@{own}", "position": 5, "lag": 0, "live": True, "handled": 5,
         "handled_lag": 0}
    ]
    link = {
        "problem": None, "retry_at": None, "links": 1, "bytes_received": 0,
        "tokens_received": 0, "ingests": 0, "gaps": 0, "skipped_tokens": 0, "resets": 0,
        "conflicts": 0, "ingest_failures": 0, "pending_bytes": 0, "repairs": [],
        "repair_rows": 0, "fingerprint": None,
    }
    status["cluster"] = {
        "peers": [
            {**link, "endpoint": "tcp:host=a:port=1", "state": "self", "self": True,
             "since": now - 3600, "name": "a", "origin": own, "rows_received": 0,
             "rows_sent": None},
            {**link, "endpoint": "tcp:host=b:port=1", "state": "connected", "self": False,
             "since": now - 120, "name": MARKUP.format("peer-name"), "origin": other,
             "rows_received": 7, "rows_sent": 10, "repairs": ["ThirdOriginThirdOrig03"],
             "repair_rows": 3},
            {**link, "endpoint": "tcp:host=c:port=1", "state": "backing off", "self": False,
             "since": now - 30, "name": None, "origin": None, "rows_received": 0,
             "rows_sent": None, "problem": MARKUP.format("problem")},
        ],
        "repairing": ["ThirdOriginThirdOrig03"],
        "ack_peers": 1, "ack_timeout": 5.0,
        "acks": {"confirmed": 4, "timed_out": 1, "pending": 0},
        "rows_sent": {"b": 10}, "relayed_rows": 10, "originated_rows": 5,
        "relays_per_row": 2.0,
    }
    return status


def test_page_shows_the_cluster_streams_per_origin_and_roles(
    scripted: ScriptedMaster, browser: Any
) -> None:
    """Against a scripted /status of a master of a cluster: a Cluster section lists every
    entry with its state (the entry that is this master tagged), for how long, name, origin,
    rows received and sent, repairs and problem, with relays per row and the origins being
    repaired; streams show one row per origin, this master's tagged; connections show their
    role. Peer-chosen strings stay text."""
    scripted.answer((200, _cluster_status(1000.0)))
    browser.get(scripted.url)
    wait_until(lambda: _text(browser, "#cluster .relays") == "2.00", 5, "the cluster section")
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#cluster tbody tr'), (tr) =>"
        " Array.from(tr.cells, (td) => td.textContent));"
    )
    assert rows == [
        ["tcp:host=a:port=1", "selfthis master", "1h 0m", "a", "OwnOriginOwnOriginOw01", "0",
         "-", "0 B", "-", "-"],
        ["tcp:host=b:port=1", "connected", "2m 0s", MARKUP.format("peer-name"),
         "PeerOriginPeerOrigin02", "7", "10", "0 B", "ThirdOriginThirdOrig03 (3 rows)", "-"],
        ["tcp:host=c:port=1", "backing off", "30s", "-", "-", "0", "-", "0 B", "-",
         MARKUP.format("problem")],
    ]
    assert _text(browser, "#cluster .repairing") == "ThirdOriginThirdOrig03"
    summary = _text(browser, "#cluster .summary")
    assert summary is not None and "relays per row 2.00 (10 rows relayed, 5 published here)" \
        in summary
    assert "acks from 1 peers: 4 confirmed, 1 timed out, 0 waiting" in summary, summary
    assert _texts(browser, '#streams tr[data-origin] td.origin') == [
        "OwnOriginOwnOriginOw01this master", "PeerOriginPeerOrigin02"
    ]
    assert _text(browser, 'tr[data-origin="PeerOriginPeerOrigin02"] td.head') == "7"
    assert _texts(browser, "#connections td.role") == ["peer"]
    assert _text(browser, "#connections h2") == "Connections(1)"
    page_text = browser.execute_script("return document.body.textContent")
    assert "events@OwnOriginOwnOriginOw01:5" in page_text
    assert _texts(browser, ".injected") == []
    assert browser.execute_script("return window.pwned === undefined") is True
