"""The catcher's web page in a real browser: headless Chromium through selenium.

A CatcherServer runs on loopback in this process; messages arrive through
smtplib; the page is driven as a user would: the inbox updates without a
reload, a message opens, every tab shows its part, an attachment downloads
with its bytes intact, deletions and reads made elsewhere show live, search
and paging work, the layout stacks on a phone-sized screen.  Messages built
to attack the page (script in the subject, addresses and file names; HTML
with scripts, ``javascript:`` links, remote images, CSS ``url()`` and
``<meta http-equiv=refresh>``) must render as inert text: no alert, no
``window.__pwned``, and no request reaches a beacon listener on loopback
until "Load remote content" is clicked (then only image and style loads).

The tests skip when selenium (the ``browser`` extra), Chromium or
chromedriver is missing; ``.ci/run`` installs all three.  Every wait is a
WebDriverWait bounded by :data:`WAIT` seconds.

``CATCHER_SCREENSHOTS=DIR`` makes :func:`test_screenshots` save the
inbox and a message view as ``DIR/catcher-inbox.png`` and
``DIR/catcher-message.png``, and the message on a phone-sized screen as
``DIR/catcher-phone.png`` (the pictures in docs/catcher.md).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import smtplib
import socket
import threading
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from smtpd_compat import CatcherServer, Controller

WAIT = 10
PACKAGE = Path(__file__).resolve().parent.parent / "smtpd_compat"
ROWS = "#messages li.msg"


# -- what needs no browser ---------------------------------------------------

def test_the_script_never_writes_markup() -> None:
    script = (PACKAGE / "_catcher_app.js").read_text(encoding="utf-8")
    script = re.sub(r"/\*.*?\*/", "", script, flags=re.S)  # the comments name the sinks
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setAttribute(\"style"):
        assert sink not in script, sink


def test_the_page_has_no_inline_code() -> None:
    page = (PACKAGE / "_catcher_index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S | re.I)
    assert scripts == [""], "one external script, nothing inline"
    assert re.search(r'<script src="/static/app.js"', page)
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=|javascript:", page, re.I)
    assert '<link rel="stylesheet" href="/static/app.css">' in page


# -- the browser and the servers ---------------------------------------------

def _executable(*names: str) -> Optional[str]:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the 'browser' extra)")
    from selenium.webdriver.chrome.service import Service

    chromium = _executable("chromium", "chromium-browser", "google-chrome")
    driver_path = _executable("chromedriver")
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt install chromium)")
    if driver_path is None:
        pytest.skip("chromedriver is not installed (Debian: apt install chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
    })
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


class Catcher:
    """A CatcherServer on loopback, its page's address and a JSON client."""

    def __init__(self, controller: Controller[Any]) -> None:
        self.controller = controller
        host, port = controller.server.web_address[:2]
        self.url = "http://%s:%d" % ("[%s]" % host if ":" in host else host, port)

    def send(self, message: EmailMessage, sender: str = "sender@example.com", to: Optional[List[str]] = None) -> None:
        with smtplib.SMTP(*self.controller.address, timeout=WAIT) as client:
            client.send_message(message, from_addr=sender, to_addrs=to or ["rcpt@example.com"])

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            payload = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(payload)
            return payload

    def clear(self) -> None:
        self.api("DELETE", "/api/v1/messages", {})


def _start_catcher(**kwargs: Any) -> Controller[Any]:
    return Controller(CatcherServer, ("127.0.0.1", 0), web=("127.0.0.1", 0), **kwargs).start()


@pytest.fixture(scope="module")
def catcher_server() -> Iterator[Catcher]:
    controller = _start_catcher()
    try:
        yield Catcher(controller)
    finally:
        controller.stop()


@pytest.fixture
def catcher(browser: Any, catcher_server: Catcher) -> Catcher:
    """The module's catcher, emptied, with the browser on a fresh inbox."""
    catcher_server.clear()
    browser.set_window_size(1280, 800)
    browser.get_log("browser")  # what earlier tests left
    browser.get(catcher_server.url + "/")
    _wait(browser, lambda d: d.find_element("id", "status").text == "live", "the event stream to open")
    return catcher_server


class Beacon:
    """A loopback HTTP listener that records every path requested of it."""

    def __init__(self) -> None:
        hits = self.hits = []  # type: List[str]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


@pytest.fixture
def beacon() -> Iterator[Beacon]:
    listener = Beacon()
    try:
        yield listener
    finally:
        listener.close()


# -- helpers -------------------------------------------------------------------

def _wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The list is re-rendered on every event: an element found may go stale
    # before it is read, and is then found again.
    return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,)).until(condition, message="waited %ds for %s" % (WAIT, what))


# The list is re-rendered after every event, so rows are read in one script
# (a snapshot) and clicked through _click_row(), never kept as elements.
SNAPSHOT = """return Array.from(document.querySelectorAll(arguments[0]), (li) => ({
    id: li.dataset.id, unread: li.classList.contains("unread"), text: li.innerText,
    subject: li.querySelector(".subject").textContent, sender: li.querySelector(".from").textContent,
    clip: li.querySelector("svg.clip") !== null}))"""


def _rows(driver: Any) -> List[Dict[str, Any]]:
    return driver.execute_script(SNAPSHOT, ROWS)


def _subjects(driver: Any) -> List[str]:
    return [row["subject"] for row in _rows(driver)]


def _wait_rows(driver: Any, count: int) -> List[Dict[str, Any]]:
    seen: List[List[Dict[str, Any]]] = []

    def counted(d: Any) -> bool:
        seen[:] = [_rows(d)]
        return len(seen[0]) == count

    _wait(driver, counted, "%d rows in the inbox" % count)
    return seen[0]


def _click_row(driver: Any, index: int = 0) -> None:
    def click(d: Any) -> bool:
        d.find_elements("css selector", ROWS + " a")[index].click()
        return True

    _wait(driver, click, "a click on row %d" % index)


def _message(subject: str, text: str = "Hello,\nplain text.\n", html: Optional[str] = None,
             attachments: Tuple[Tuple[str, bytes], ...] = (), sender: str = "Ann Sender <ann@example.com>",
             to: str = "Bob Rcpt <bob@example.com>") -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for name, data in attachments:
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return message


def _open_tab(driver: Any, name: str) -> Any:
    button = driver.find_element("css selector", "#tabs button[data-tab=%s]" % name)
    _wait(driver, lambda d: button.is_displayed(), "the %s tab's button" % name)
    button.click()
    _wait(driver, lambda d: d.find_element("id", "tab-panel").get_attribute("data-tab") == name
          and d.find_elements("css selector", "#tab-panel > :not(.loading)"), "the %s tab" % name)
    return driver.find_element("id", "tab-panel")


@contextlib.contextmanager
def _inside(driver: Any, frame: Any) -> Iterator[None]:
    """The ``with`` block works inside *frame* (the message's HTML view),
    then in the page again."""
    driver.switch_to.frame(frame)
    try:
        yield
    finally:
        driver.switch_to.default_content()


def _wait_body(driver: Any, frame: Any, text: str, what: str) -> None:
    """Wait until the body of *frame* shows *text*."""
    with _inside(driver, frame):
        _wait(driver, lambda d: text in d.find_element("tag name", "body").text, what)


def _no_alert(driver: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018


def _csp_reports(driver: Any) -> List[str]:
    return [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]


# -- the inbox and one message ------------------------------------------------

def test_a_message_appears_live_opens_in_every_tab_and_is_deleted(catcher: Catcher, browser: Any, downloads: Path) -> None:
    assert _csp_reports(browser) == [], "the page itself breaks its CSP"
    browser.execute_script("window.__sameDocument = 42")
    assert _rows(browser) == []
    payload = bytes(range(256)) * 3
    catcher.send(_message("Quarterly report", html="<p>Hello <b>HTML</b> reader</p>",
                          attachments=(("report data.bin", payload),)),
                 sender="bounce@example.com", to=["bob@example.com", "carol@example.com"])
    row, = _wait_rows(browser, 1)
    assert browser.execute_script("return window.__sameDocument") == 42, "the page reloaded"
    _wait(browser, lambda d: d.title.startswith("(1) "), "the unread count in the title")
    assert row["unread"]
    assert "Quarterly report" in row["text"] and "Ann Sender" in row["text"]
    assert row["clip"], "no paperclip for the attachment"

    _click_row(browser)
    _wait(browser, lambda d: d.find_element("id", "msg-subject").text == "Quarterly report", "the message view")
    _wait(browser, lambda d: not _rows(d)[0]["unread"], "the row to show it read")
    _wait(browser, lambda d: not d.title.startswith("("), "the title without unread count")
    assert "Ann Sender <ann@example.com>" in browser.find_element("id", "msg-meta").text

    frame = _open_tab(browser, "html").find_element("tag name", "iframe")
    assert frame.get_attribute("sandbox") == ""
    assert re.fullmatch(r"/view/[^/]+\.html", frame.get_attribute("src").split(catcher.url, 1)[1])
    _wait_body(browser, frame, "Hello HTML reader", "the HTML body")
    assert "plain text." in _open_tab(browser, "text").text
    headers = _open_tab(browser, "headers").text
    assert "Subject Quarterly report" in headers and "From Ann Sender <ann@example.com>" in headers
    raw = _open_tab(browser, "raw").find_element("tag name", "pre").text
    assert raw.startswith("From: Ann Sender") or "\nSubject: Quarterly report" in raw
    tree = _open_tab(browser, "tree").text
    assert "multipart/mixed" in tree and "text/html" in tree and "report data.bin" in tree
    envelope = _open_tab(browser, "envelope").text
    assert "<bounce@example.com>" in envelope and "<bob@example.com>, <carol@example.com>" in envelope
    assert "127.0.0.1" in envelope

    link = _open_tab(browser, "attachments").find_element("css selector", "a.download")
    assert link.text == "report data.bin"
    link.click()
    target = downloads / "report data.bin"
    _wait(browser, lambda d: target.exists() and target.read_bytes() == payload, "the downloaded attachment")

    browser.find_element("id", "delete-one").click()
    _wait_rows(browser, 0)
    _wait(browser, lambda d: d.find_element("id", "message").get_attribute("hidden") is not None, "the view to close")
    assert catcher.api("GET", "/api/v1/messages")["total"] == 0
    _no_alert(browser)


def test_changes_made_elsewhere_show_live(catcher: Catcher, browser: Any) -> None:
    for number in range(3):
        catcher.send(_message("live %d" % number))
    rows = _wait_rows(browser, 3)
    assert [r["subject"] for r in rows] == ["live 2", "live 1", "live 0"]
    _wait(browser, lambda d: d.title.startswith("(3) "), "three unread in the title")
    middle = rows[1]["id"]
    catcher.api("PUT", "/api/v1/messages", {"IDs": [middle], "Read": True})
    _wait(browser, lambda d: not _rows(d)[1]["unread"], "the read mark")
    _wait(browser, lambda d: d.title.startswith("(2) "), "two unread in the title")

    browser.find_element("id", "mark-all-read").click()
    _wait(browser, lambda d: not d.title.startswith("(") and not d.find_elements("css selector", "#messages li.unread"), "all read")
    _click_row(browser)
    _wait(browser, lambda d: d.find_element("id", "msg-subject").text == "live 2", "the message view")
    catcher.api("DELETE", "/api/v1/messages", {"IDs": [middle]})
    _wait(browser, lambda d: [r["id"] for r in _rows(d)] == [rows[0]["id"], rows[2]["id"]], "the deleted row to go")
    catcher.api("DELETE", "/api/v1/messages", {})
    _wait_rows(browser, 0)
    _wait(browser, lambda d: d.find_element("id", "msg-subject").text == "This message was deleted.", "the deleted notice")


def test_delete_all_asks_first(catcher: Catcher, browser: Any) -> None:
    catcher.send(_message("keep me"))
    _wait_rows(browser, 1)
    browser.find_element("id", "delete-all").click()
    _wait(browser, lambda d: d.switch_to.alert, "the confirm dialog").dismiss()
    assert catcher.api("GET", "/api/v1/messages")["total"] == 1
    browser.find_element("id", "delete-all").click()
    _wait(browser, lambda d: d.switch_to.alert, "the confirm dialog").accept()
    _wait_rows(browser, 0)
    assert catcher.api("GET", "/api/v1/messages")["total"] == 0


def test_search_narrows_the_list(catcher: Catcher, browser: Any) -> None:
    catcher.send(_message("Invoice 1001", text="total 12 EUR"))
    catcher.send(_message("Welcome aboard", text="hello there", sender="Hank <hank@example.org>"))
    catcher.send(_message("Invoice 1002", text="total 99 EUR"))
    _wait_rows(browser, 3)
    search = browser.find_element("id", "search")
    browser.find_element("tag name", "body").send_keys("/")
    assert browser.switch_to.active_element == search, "'/' focuses the search box"
    search.send_keys("invoice")
    _wait(browser, lambda d: sorted(_subjects(d))
          == ["Invoice 1001", "Invoice 1002"], "two invoices")
    search.send_keys(" 99")
    _wait(browser, lambda d: _subjects(d) == ["Invoice 1002"], "one invoice")
    search.clear()
    search.send_keys("from:hank")
    _wait(browser, lambda d: _subjects(d) == ["Welcome aboard"], "hank's")
    search.clear()
    search.send_keys("nothing-matches-this")
    _wait_rows(browser, 0)
    assert browser.find_element("id", "list-empty").text == "No message matches."


def test_pages_of_fifty(catcher: Catcher, browser: Any) -> None:
    with smtplib.SMTP(*catcher.controller.address, timeout=WAIT) as client:
        for number in range(53):
            client.send_message(_message("bulk %02d" % number), "a@example.com", ["b@example.com"])
    _wait(browser, lambda d: d.find_element("id", "page-info").text == "1–50 of 53", "the first page")
    assert _subjects(browser)[0] == "bulk 52"
    browser.find_element("id", "older").click()
    _wait(browser, lambda d: d.find_element("id", "page-info").text == "51–53 of 53", "the second page")
    _wait(browser, lambda d: _subjects(d) == ["bulk 02", "bulk 01", "bulk 00"], "the last three")
    assert not browser.find_element("id", "older").is_enabled()
    browser.find_element("id", "newer").click()
    _wait(browser, lambda d: d.find_element("id", "page-info").text == "1–50 of 53", "the first page again")


def test_the_page_says_when_the_bound_dropped_messages(browser: Any) -> None:
    controller = _start_catcher(max_messages=2)
    try:
        small = Catcher(controller)
        for number in range(3):
            small.send(_message("bounded %d" % number))
        browser.get(small.url + "/")
        _wait_rows(browser, 2)
        notice = browser.find_element("id", "notice")
        _wait(browser, lambda d: notice.is_displayed(), "the dropped notice")
        assert notice.text.startswith("1 older message was dropped")
        assert "2" in notice.text and "--max-messages" in notice.text
    finally:
        controller.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_the_page_works_over_ipv6(browser: Any) -> None:
    controller = Controller(CatcherServer, ("127.0.0.1", 0), web=("::1", 0)).start()
    try:
        catcher = Catcher(controller)
        assert catcher.url.startswith("http://[::1]:")
        browser.get(catcher.url + "/")
        _wait(browser, lambda d: d.find_element("id", "status").text == "live", "the event stream over IPv6")
        catcher.send(_message("over IPv6"))
        row, = _wait_rows(browser, 1)
        _click_row(browser)
        _wait(browser, lambda d: d.find_element("id", "msg-subject").text == "over IPv6", "the message over IPv6")
        assert "plain text." in _open_tab(browser, "text").text
    finally:
        controller.stop()


def test_phone_sized_screen_shows_one_pane_at_a_time(catcher: Catcher, browser: Any) -> None:
    catcher.send(_message("On the go " + "long words " * 20, attachments=(("a.txt", b"a"),)))
    _wait_rows(browser, 1)
    browser.set_window_size(390, 844)
    width = "return [document.documentElement.scrollWidth, window.innerWidth]"
    _wait(browser, lambda d: not d.find_element("id", "message-pane").is_displayed(), "the message pane to hide")
    scroll_width, inner_width = browser.execute_script(width)
    assert scroll_width <= inner_width, "the inbox scrolls sideways on a phone"
    _click_row(browser)
    _wait(browser, lambda d: d.find_element("id", "message").is_displayed(), "the message")
    assert not browser.find_element("css selector", ".list-pane").is_displayed()
    _open_tab(browser, "envelope")
    scroll_width, inner_width = browser.execute_script(width)
    assert scroll_width <= inner_width, "the message scrolls sideways on a phone"
    browser.find_element("id", "back").click()
    _wait(browser, lambda d: d.find_element("css selector", ".list-pane").is_displayed(), "the inbox again")
    _click_row(browser)
    _wait(browser, lambda d: not d.find_element("css selector", ".list-pane").is_displayed(), "the message again")
    browser.back()
    _wait(browser, lambda d: d.find_element("css selector", ".list-pane").is_displayed(), "the inbox after the browser's back")


# -- hostile messages ------------------------------------------------------------

PWN = "window.__pwned=1;try{parent.__pwned=1;top.__pwned=1}catch(e){}"


def _hostile_html(beacon: str) -> str:
    return "".join([
        '<meta http-equiv="refresh" content="0;url=%s/refresh">' % beacon,
        "<style>body{background:url(%s/css)}</style>" % beacon,
        '<link rel="stylesheet" href="%s/link.css">' % beacon,
        "<script>%s;alert(1);new Image().src='%s/script'</script>" % (PWN, beacon),
        '<p id="greeting">Hello hostile world</p>',
        '<a id="js" href="javascript:%s;new Image().src=\'%s/js-link\'">click me</a>' % (PWN, beacon),
        '<a id="top" href="%s/top-nav" target="_top">leave</a>' % beacon,
        '<img src="%s/img" alt="remote">' % beacon,
        '<img src="x" onerror="%s;new Image().src=\'%s/onerror\'">' % (PWN, beacon),
        '<div style="background-image:url(\'%s/inline-css\')">styled</div>' % beacon,
        '<iframe src="%s/frame"></iframe>' % beacon,
        '<form action="%s/form" method="post"><button id="submit">send</button></form>' % beacon,
        '<svg><script>%s</script></svg>' % PWN,
    ])


HOSTILE_SUBJECT = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
HOSTILE_FILE = '<img src=x onerror="window.__pwned=1">.txt'
#: Loads the HTML body may make once "Load remote content" is clicked.
REMOTE_OK = {"/img", "/css", "/inline-css", "/link.css"}


def test_hostile_messages_render_inert(catcher: Catcher, browser: Any, beacon: Beacon) -> None:
    message = _message(HOSTILE_SUBJECT, html=_hostile_html(beacon.url),
                       sender='"<script>window.__pwned=1</script>" <evil@example.com>',
                       to='"<img src=x onerror=window.__pwned=1>" <victim@example.com>',
                       attachments=((HOSTILE_FILE, b"inert"),))
    catcher.send(message)
    row, = _wait_rows(browser, 1)
    assert row["subject"] == HOSTILE_SUBJECT
    assert row["sender"] == "<script>window.__pwned=1</script>"
    _click_row(browser)
    _wait(browser, lambda d: d.find_element("id", "msg-subject").text == HOSTILE_SUBJECT, "the hostile message")
    assert "<img src=x onerror=window.__pwned=1> <victim@example.com>" in browser.find_element("id", "msg-meta").text

    frame = _open_tab(browser, "html").find_element("tag name", "iframe")
    with _inside(browser, frame):
        _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete"
              and "Hello hostile world" in d.find_element("tag name", "body").text, "the hostile HTML body")
        browser.find_element("id", "js").click()
        browser.find_element("id", "submit").click()
    _open_tab(browser, "attachments")
    assert browser.find_element("css selector", "a.download").text == HOSTILE_FILE
    for tab in ("text", "headers", "raw", "tree", "envelope"):
        _open_tab(browser, tab)
    _no_alert(browser)
    assert browser.execute_script("return window.__pwned") is None
    markup = "return document.querySelectorAll('#messages img, #message img, script:not([src]), [onerror]').length"
    assert browser.execute_script(markup) == 0

    # Remote content, once asked for, loads images and styles, never scripts:
    # the beacon's first image hit also shows that the frame's earlier loads
    # (the blocked view) had their chance to reach it.
    assert beacon.hits == [], "the blocked view reached the network"
    _open_tab(browser, "html").find_element("id", "load-remote").click()
    _wait(browser, lambda d: "/img" in beacon.hits, "the remote image after 'Load remote content'")
    frame = browser.find_element("css selector", "#tab-panel iframe")
    assert frame.get_attribute("src").endswith("?remote=1") and frame.get_attribute("sandbox") == ""
    with _inside(browser, frame):
        _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete", "the remote view")
        browser.find_element("id", "js").click()
        browser.find_element("id", "top").click()
    assert set(beacon.hits) <= REMOTE_OK, beacon.hits
    _no_alert(browser)
    assert browser.execute_script("return window.__pwned") is None
    assert browser.current_url.startswith(catcher.url), "the message navigated the page away"


def _malformed() -> bytes:
    nested = b"".join(b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (depth, depth) for depth in range(60))
    return b"".join([
        b"From: =?utf-8?b?!!broken!!?= <odd@example.com>\r\n",
        b"To: undisclosed-recipients:;\r\n",
        b"Subject: bad bytes \xff\xfe =?x-unknown?q?abc?= malformed\r\n",
        b"X-Long: " + b"y" * 20000 + b"\r\n",
        b'Content-Type: multipart/mixed; boundary="top"\r\n\r\n',
        b"--top\r\nContent-Type: text/html; charset=x-unknown\r\n\r\n<p>Broken charset</p>\r\n",
        b'--top\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n'
        b'Content-Disposition: attachment; filename="half.bin"\r\n\r\n!!!not base64!!!\r\n',
        b"--top\r\n" + nested + b"deep\r\n",
        b"(no closing boundary)\r\n",
    ])


def test_malformed_mime_still_opens_in_every_tab(catcher: Catcher, browser: Any) -> None:
    with smtplib.SMTP(*catcher.controller.address, timeout=WAIT) as client:
        client.sendmail("odd@example.com", ["rcpt@example.com"], _malformed())
    row, = _wait_rows(browser, 1)
    assert "malformed" in row["subject"]
    _click_row(browser)
    _wait(browser, lambda d: "malformed" in d.find_element("id", "msg-subject").text, "the malformed message")
    for tab in ("html", "text", "headers", "raw", "tree", "attachments", "envelope"):
        panel = _open_tab(browser, tab)
        assert not panel.find_elements("css selector", ".error"), (tab, panel.text)
    assert "X-Long" in _open_tab(browser, "headers").text
    assert "half.bin" in _open_tab(browser, "tree").text
    _no_alert(browser)


class _OnePassword:
    def check(self, user: str, password: str) -> bool:
        return (user, password) == ("dev", "s3cret")


def test_the_page_works_behind_basic_auth(browser: Any) -> None:
    controller = Controller(CatcherServer, ("127.0.0.1", 0), web=("127.0.0.1", 0), web_auth=_OnePassword()).start()
    try:
        catcher = Catcher(controller)
        browser.get(catcher.url.replace("http://", "http://dev:s3cret@") + "/")
        _wait(browser, lambda d: d.find_element("id", "status").text == "live", "the event stream behind basic auth")
        catcher.send(_message("behind a password", html="<p>protected body</p>", attachments=(("p.txt", b"p"),)))
        row, = _wait_rows(browser, 1)
        _click_row(browser)
        frame = _open_tab(browser, "html").find_element("tag name", "iframe")
        _wait_body(browser, frame, "protected body", "the HTML body behind basic auth")
        assert "p.txt" in _open_tab(browser, "tree").text
    finally:
        controller.stop()


def _has_release() -> bool:
    try:
        import smtpd_compat._catcher_release  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_release(), reason="release (--release-to) is not in this build")
def test_release_from_the_page(browser: Any) -> None:
    from smtpd_compat import RecordingServer

    with Controller(RecordingServer) as upstream:
        controller = _start_catcher(release_to=upstream.address)
        try:
            catcher = Catcher(controller)
            browser.get(catcher.url + "/")
            catcher.send(_message("send it on"), sender="app@example.com", to=["first@example.com"])
            row, = _wait_rows(browser, 1)
            _click_row(browser)
            release = browser.find_element("id", "release")
            _wait(browser, lambda d: release.is_displayed(), "the Release button")
            release.click()
            prompt = _wait(browser, lambda d: d.switch_to.alert, "the recipients prompt")
            prompt.send_keys("qa@example.com, lead@example.com")
            prompt.accept()
            _wait(browser, lambda d: d.find_element("id", "notice").text == "Released to qa@example.com, lead@example.com.", "the notice")
            message, = upstream.server.wait_for(1, timeout=WAIT)
            assert message.mailfrom == "app@example.com"
            assert sorted(message.rcpttos) == ["lead@example.com", "qa@example.com"]
            assert b"Subject: send it on" in message.data
        finally:
            controller.stop()


# -- pictures for the documentation ---------------------------------------------

SAMPLES = [
    ("Your order #4821 has shipped", "Shop Notifications <orders@shop.example>", "Ada Lovelace <ada@example.com>",
     "Hi Ada, order #4821 left our warehouse today and should arrive on Thursday.",
     "<h2>Your order is on its way</h2><p>Hi Ada,</p><p>Order <b>#4821</b> left our warehouse today and should "
     "arrive on <b>Thursday</b>.</p><table border=1 cellpadding=6><tr><th>Item</th><th>Qty</th></tr>"
     "<tr><td>Mechanical keyboard</td><td>1</td></tr><tr><td>USB-C cable</td><td>2</td></tr></table>"
     "<p>Thanks for shopping with us.</p>", (("invoice-4821.pdf", b"%PDF-1.4 sample"),)),
    ("Reset your password", "Accounts <no-reply@app.example>", "grace@example.com",
     "Someone asked to reset the password of grace@example.com. The link is valid for 30 minutes.", None, ()),
    ("Weekly report: 12 new sign-ups", "Reports <reports@app.example>", "Team <team@example.com>",
     "Sign-ups this week: 12 (last week: 9). The numbers per day are attached.",
     "<p>Sign-ups this week: <b>12</b></p>", (("report.csv", b"day,signups\nmon,3\n"),)),
    ("Welcome to the beta!", "Product Team <hello@app.example>", "Linus <linus@example.com>",
     "Thanks for joining the beta. Here is what to try first.", "<p>Welcome!</p>", ()),
    ("[CI] Build #311 passed", "CI <ci@build.example>", "dev@example.com",
     "Build #311 of main passed in 4 min 12 s: 1,204 tests.", None, ()),
]


@pytest.mark.skipif(not os.environ.get("CATCHER_SCREENSHOTS"), reason="set CATCHER_SCREENSHOTS=DIR to save the docs' pictures")
def test_screenshots(catcher: Catcher, browser: Any) -> None:
    folder = Path(os.environ["CATCHER_SCREENSHOTS"])
    browser.set_window_size(1280, 900)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
    for subject, sender, to, text, html, files in reversed(SAMPLES):
        catcher.send(_message(subject, text=text + "\n", html=html, attachments=files, sender=sender, to=to))
    _wait_rows(browser, len(SAMPLES))
    _click_row(browser, 2)
    _wait(browser, lambda d: d.find_element("id", "msg-subject").text == SAMPLES[2][0], "a read message")
    browser.get(catcher.url + "/")
    _wait_rows(browser, len(SAMPLES))
    assert browser.save_screenshot(str(folder / "catcher-inbox.png"))
    _click_row(browser)
    frame = _open_tab(browser, "html").find_element("tag name", "iframe")
    _wait_body(browser, frame, "Mechanical keyboard", "the HTML body")
    assert browser.save_screenshot(str(folder / "catcher-message.png"))
    browser.set_window_size(390, 844)
    _wait(browser, lambda d: not d.find_element("css selector", ".list-pane").is_displayed(), "the phone layout")
    assert browser.save_screenshot(str(folder / "catcher-phone.png"))
