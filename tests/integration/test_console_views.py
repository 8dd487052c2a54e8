"""The console's views against awkward API answers: failures, closed feeds, caps, long values.

The console's own server (pages and static files, nothing else) runs for real; the JSON API
behind it is played by the browser's request interception, so a test can close a task's feed
mid-way, fail a request, or cap a neighbourhood exactly when it needs to. Headless Chromium
(Debian's ``chromium``) is driven by Playwright; where either is missing the tests skip.
``test_console.py`` covers the same pages against a running platform.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from spine.platform.app.console.assets import AssetError, ensure_assets
from spine.platform.app.console.site import install

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Request, Route

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("SPINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 30_000  # a bound for a loaded machine, not a timing assertion
KEY = "sk-console-views"
SESSION = {"tenant": "acme", "role": "admin", "key_id": "k1", "reads_other_tenants": False}
PAGES = ["/ui/", "/ui/graph", "/ui/tasks", "/ui/tasks/t1", "/ui/routing", "/ui/events"]


@pytest.fixture(scope="module")
def console() -> Iterator[str]:
    """The console's pages served alone, on a free port: its base URL."""
    app = FastAPI()
    install(app)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started, "the console's server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    try:
        from playwright.async_api import Error, async_playwright
    except ImportError as exc:
        pytest.skip(f"Playwright for Python is not installed ({exc}): pip install -e '.[dev]'")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set SPINE_CHROMIUM)")
    try:
        ensure_assets()
    except AssetError as exc:
        pytest.skip(f"the console's assets are missing and cannot be fetched: {exc}")
    async with async_playwright() as playwright:
        try:
            launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        except Error as exc:
            pytest.skip(f"Chromium at {CHROMIUM} does not start headless: {exc}")
        yield launched
        await launched.close()


def reply(body: Any, status: int = 200) -> dict[str, Any]:
    return {"status": status, "content_type": "application/json", "body": json.dumps(body)}


def failure(status: int, message: str) -> dict[str, Any]:
    return reply({"error": {"type": "unavailable", "message": message}}, status)


def feed(*events: dict[str, Any]) -> dict[str, Any]:
    """A task feed that sends ``events`` and closes, as a server going away does."""
    blocks = [f"id: {e['seq']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events]
    return {"status": 200, "content_type": "text/event-stream", "body": "".join(blocks)}


Answer = dict[str, Any] | None  # None: the connection fails (a network error)
Handler = Callable[[dict[str, str], "Request"], Answer | Awaitable[Answer]]


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeApi:
    """The JSON API as the browser sees it: answers by method and path, and what was asked."""

    routes: list[tuple[str, re.Pattern[str], Handler]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def on(self, method: str, pattern: str, handler: Handler | Answer) -> None:
        """Answer ``method pattern`` (a regex over the path, ids decoded); the latest wins."""
        answer = handler if callable(handler) else (lambda _q, _r, a=handler: a)
        self.routes.insert(0, (method, re.compile(f"^{pattern}$"), answer))

    def asked(self, path: str) -> list[Call]:
        return [call for call in self.calls if call.path == path]

    async def handle(self, route: Route, request: Request) -> None:
        url = urlsplit(request.url)
        path = unquote(url.path)
        query = {name: values[-1] for name, values in parse_qs(url.query).items()}
        self.calls.append(Call(request.method, path, query, await request.all_headers()))
        for method, pattern, handler in self.routes:
            if method == request.method and pattern.match(path):
                given = handler(query, request)
                answer = await given if inspect.isawaitable(given) else given
                if answer is None:
                    await route.abort("connectionrefused")
                else:
                    await route.fulfill(**answer)
                return
        await route.fulfill(**failure(404, f"the fake API has no {request.method} {path}"))


@dataclass
class Browsing:
    page: Page
    api: FakeApi
    url: str
    problems: list[str]
    expected: list[str]  # console errors a test provokes on purpose (a substring each)

    def expect_errors(self, *fragments: str) -> None:
        self.expected.extend(fragments)


def session(_query: dict[str, str], request: Request) -> Answer:
    if request.headers.get("authorization") == f"Bearer {KEY}":
        return reply(SESSION)
    return failure(401, "the key is not valid")


@pytest.fixture
async def browsing(browser: Browser, console: str) -> AsyncIterator[Browsing]:
    """A 1366x768 tab on the console, signed out, in front of a fake API."""
    context = await browser.new_context(viewport={"width": 1366, "height": 768})
    api = FakeApi()
    api.on("GET", "/ui/api/session", session)
    await context.route(re.compile(r"^[^?]*/(v1|ui/api)/"), api.handle)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    browsing = Browsing(page=page, api=api, url=console, problems=problems, expected=[])
    yield browsing
    await context.close()
    # A script error or a refused script/style (the Content-Security-Policy) fails the test.
    unexpected = [p for p in problems if not any(e in p for e in browsing.expected)]
    assert unexpected == [], "\n".join(unexpected)


async def signed_in(browsing: Browsing) -> Page:
    """The tab with the key already in this tab's storage, as after signing in."""
    await browsing.page.context.add_init_script(
        f"sessionStorage.setItem('spine.key', {json.dumps(KEY)});"
    )
    return browsing.page


async def until(page: Page, expression: str) -> None:
    """Poll a JavaScript expression until it is true (waiting in the page would need eval)."""
    deadline = asyncio.get_running_loop().time() + WAIT_MS / 1000
    while not await page.evaluate(expression):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still false after {WAIT_MS} ms: {expression}")
        await asyncio.sleep(0.05)


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / name, full_page=True)


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.extend(value for name, value in attrs if name == "id" and value)


# ---- ids, and a failed request on Events -------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_no_page_gives_two_elements_one_id(console: str, path: str) -> None:
    html = httpx.get(console + path).text
    parser = _Ids()
    parser.feed(html)
    repeated = sorted({i for i in parser.ids if parser.ids.count(i) > 1})
    assert repeated == []


async def test_a_failed_request_is_shown_and_leaves_the_status_filter_alone(
    browsing: Browsing,
) -> None:
    page = await signed_in(browsing)
    browsing.api.on("GET", "/v1/events", failure(503, "the event log is down"))
    browsing.expect_errors("status of 503")
    await page.goto(browsing.url + "/ui/events")
    await page.locator("p[role=status]", has_text="the event log is down (HTTP 503)").wait_for(
        timeout=WAIT_MS
    )
    status = page.get_by_label("Status")
    assert await status.locator("option").count() == 5
    assert await status.input_value() == ""
    await status.select_option("mapped")
    assert await status.input_value() == "mapped"


# ---- a live task whose feed closes before the task ends ----------------------------------


def task_view(state: str, attempts: int = 1) -> dict[str, Any]:
    return {
        "id": "t1",
        "agent": "writer",
        "state": state,
        "attempts": attempts,
        "created_at": "2026-01-02T03:04:05Z",
        "input": {"prompt": "write"},
        "result": {"text": "all done"} if state == "succeeded" else None,
        "error": None,
        "approval": None,
    }


def event(seq: int, type_: str, **data: Any) -> dict[str, Any]:
    return {"seq": seq, "type": type_, **data, "at": f"2026-01-02T03:04:{seq:02d}Z"}


def calls(count: int) -> dict[str, Any]:
    call = {
        "time": "2026-01-02T03:04:05Z",
        "model": "llama3.2",
        "provider": "ollama",
        "outcome": "ok",
        "input_tokens": 10,
        "output_tokens": 5,
        "cost": "0.0001",
        "latency_ms": 12.0,
    }
    return reply(
        {
            "task_id": "t1",
            "calls": [call] * count,
            "cost": "0.0001",
            "input_tokens": 10 * count,
            "output_tokens": 5 * count,
        }
    )


async def timeline(page: Page) -> list[str]:
    types: list[str] = await page.locator("#timeline li").evaluate_all(
        "items => items.map(i => i.dataset.type)"
    )
    return types


async def test_a_live_task_reconnects_after_its_feed_closes_and_ends_in_its_real_state(
    browsing: Browsing,
) -> None:
    page = await signed_in(browsing)
    state = {"task": "running"}
    feeds: list[Answer] = [
        # The API restarts: the stream closes after two events, the task still running.
        feed(event(1, "state", state="running", attempt=1), event(2, "delta", text="Hel")),
        None,  # the API is not back yet
        feed(
            event(3, "delta", text="lo"),
            event(4, "final", text="all done"),
            event(5, "state", state="succeeded", attempt=1),
        ),
    ]
    served: list[str] = []
    back = asyncio.Event()

    async def events(query: dict[str, str], _request: Request) -> Answer:
        served.append(query.get("after", ""))
        answer = feeds.pop(0) if feeds else feed()
        if answer is not None and not feeds:
            await back.wait()  # the last feed comes once the page has said it reconnects
            state["task"] = "succeeded"
        return answer

    browsing.api.on("GET", "/v1/tasks/t1", lambda _q, _r: reply(task_view(state["task"])))
    browsing.api.on("GET", "/v1/tasks/t1/events", events)
    browsing.api.on("GET", "/ui/api/tasks/t1/calls", calls(1))
    browsing.expect_errors("net::ERR_CONNECTION_REFUSED")
    await page.goto(browsing.url + "/ui/tasks/t1")

    note = page.locator("p[role=status]", has_text="reconnecting in")
    await note.wait_for(timeout=WAIT_MS)
    assert await page.locator("#live").inner_text() in {"(reconnecting…)", "(live)"}
    await screenshot(page, "console-task-reconnecting.png")
    back.set()

    await page.locator("#live", has_text="(ended)").wait_for(timeout=WAIT_MS)
    await page.locator("#task-state", has_text="succeeded").wait_for(timeout=WAIT_MS)
    assert await timeline(page) == ["state", "delta", "final", "state"]
    assert await page.locator("#timeline .streamed").first.inner_text() == "Hello"
    assert served[0] == "0"
    assert served[1:] and all(after == "2" for after in served[1:])
    assert await page.locator("#task-result").inner_text() == "all done"
    # The note goes once the feed is back; the cost reads in the singular for one call.
    assert "reconnecting" not in await page.locator("p[role=status]").inner_text()
    assert await page.locator("#task-cost").inner_text() == (
        "0.0001 USD · 10 tokens in, 5 out · 1 model call"
    )


async def test_the_timeline_says_why_a_task_retries_and_reads_as_words(
    browsing: Browsing,
) -> None:
    page = await signed_in(browsing)
    ended = feed(
        event(1, "state", state="running", attempt=1),
        event(
            2,
            "state",
            state="queued",
            attempt=1,
            error={"type": "provider_unavailable", "message": "the model server is down"},
            retry_in=2.5,
        ),
        event(3, "state", state="running", attempt=2),
        event(4, "cancel_requested"),
        event(5, "state", state="cancelled", attempt=2),
    )
    browsing.api.on("GET", "/v1/tasks/t1", reply(task_view("cancelled", attempts=2)))
    browsing.api.on("GET", "/v1/tasks/t1/events", ended)
    browsing.api.on("GET", "/ui/api/tasks/t1/calls", calls(2))
    await page.goto(browsing.url + "/ui/tasks/t1")
    await page.locator("#live", has_text="(ended)").wait_for(timeout=WAIT_MS)
    lines = await page.locator("#timeline li > span").all_inner_texts()
    assert lines[1] == (
        "queued (attempt 1) · provider_unavailable: the model server is down · retry in 2.5 s"
    )
    assert lines[3] == "cancellation requested"
    assert (await page.locator("#task-cost").inner_text()).endswith("2 model calls")


# ---- "Show more" goes on with the filter its cursor came from ----------------------------


def pages_of(filter_name: str, columns: dict[str, Any]) -> Handler:
    """Pages of ``kind``: 25 unfiltered rows then 25 more; 3 rows when ``filter_name`` is set."""

    def handler(query: dict[str, str], _request: Request) -> Answer:
        wanted = query.get(filter_name, "")
        if wanted:
            rows = [{**columns, "id": f"{wanted}-{n}", filter_name: wanted} for n in range(3)]
            return reply({"data": rows, "next_cursor": None})
        start = 25 if query.get("cursor") == "page-2" else 0
        rows = [{**columns, "id": f"any-{n}"} for n in range(start, start + 25)]
        return reply({"data": rows, "next_cursor": None if start else "page-2"})

    return handler


async def test_show_more_on_tasks_keeps_the_filter_its_cursor_belongs_to(
    browsing: Browsing,
) -> None:
    page = await signed_in(browsing)
    columns = {"agent": "writer", "state": "succeeded", "created_at": None, "updated_at": None}
    browsing.api.on("GET", "/v1/tasks", pages_of("state", columns))
    await page.goto(browsing.url + "/ui/tasks")
    rows = page.locator("#task-rows tr")
    await until(page, "document.querySelectorAll('#task-rows tr').length === 25")

    await page.get_by_label("State").select_option("failed")  # not applied: no "Show"
    await page.get_by_role("button", name="Show more").click()
    await until(page, "document.querySelectorAll('#task-rows tr').length > 25")
    more = browsing.api.asked("/v1/tasks")[-1]
    assert more.query == {"cursor": "page-2", "limit": "25"}
    assert all(t.startswith("any-") for t in await rows.locator("code").all_inner_texts())
    assert await rows.count() == 50
    # The form says its change is not applied yet.
    assert await page.locator("#filters-pending").is_visible()

    await page.get_by_role("button", name="Show", exact=True).click()
    await until(page, "document.querySelectorAll('#task-rows tr').length === 3")
    assert await page.locator("#filters-pending").is_hidden()
    assert await page.get_by_role("button", name="Show more").is_hidden()
    assert browsing.api.asked("/v1/tasks")[-1].query == {"state": "failed", "limit": "25"}


async def test_show_more_on_events_keeps_the_filter_its_cursor_belongs_to(
    browsing: Browsing,
) -> None:
    page = await signed_in(browsing)
    columns = {
        "received_at": None,
        "type": "com.example.thing",
        "source": "/x",
        "attempts": 1,
        "status": "mapped",
    }
    browsing.api.on("GET", "/v1/events", pages_of("status", columns))
    browsing.api.on("GET", "/ui/api/mappings", reply({"data": {"com.example.thing": None}}))
    await page.goto(browsing.url + "/ui/events")
    await until(page, "document.querySelectorAll('#event-rows tr').length === 25")

    await page.get_by_label("Type").fill("com.example.other")  # not applied: no "Show"
    await page.get_by_role("button", name="Show more").click()
    await until(page, "document.querySelectorAll('#event-rows tr').length > 25")
    more = [c for c in browsing.api.asked("/v1/events") if "cursor" in c.query]
    assert [c.query for c in more] == [{"cursor": "page-2", "limit": "50"}]
    assert await page.locator("#event-rows tr").count() == 50
    assert await page.locator("#filters-pending").is_visible()


# ---- a deep link survives signing in; other addresses do not -----------------------------


def neighbourhood(centre: str, count: int, *, truncated: bool | None = None) -> dict[str, Any]:
    nodes = [{"id": centre, "labels": ["Person"], "properties": {"name": "Ann"}}]
    edges = []
    for n in range(count):
        nodes.append(
            {"id": f"Company:{n}", "labels": ["Company"], "properties": {"name": f"Co {n}"}}
        )
        edges.append(
            {
                "id": f"r{n}",
                "type": "WORKS_AT",
                "source": centre,
                "target": f"Company:{n}",
                "properties": {},
            }
        )
    view: dict[str, Any] = {"nodes": nodes, "edges": edges}
    if truncated is not None:
        view["truncated"] = truncated
    return view


def graph_api(api: FakeApi, view: dict[str, Any]) -> None:
    api.on(
        "GET",
        "/ui/api/graph/schema",
        reply({"labels": ["Company", "Person"], "types": ["WORKS_AT"]}),
    )
    api.on("GET", "/v1/graph/nodes/[^/]+/neighbors", reply(view))
    api.on(
        "GET",
        "/ui/api/graph/nodes/.+/events",
        lambda q, r: reply({"node": "x", "data": [], "missing": []}),
    )


async def sign_in(browsing: Browsing) -> None:
    page = browsing.page
    await page.get_by_label("API key").fill(KEY)
    await page.get_by_role("button", name="Sign in").click()


async def test_a_deep_link_is_followed_after_signing_in(browsing: Browsing) -> None:
    page = browsing.page
    graph_api(browsing.api, neighbourhood("Person:42", 2))
    await page.goto(browsing.url + "/ui/graph?node=Person:42", wait_until="commit")
    await page.wait_for_url("**/ui/?next=*", timeout=WAIT_MS)
    await sign_in(browsing)
    await page.wait_for_url(browsing.url + "/ui/graph?node=Person:42", timeout=WAIT_MS)
    await until(page, "!!window.spineGraph && window.spineGraph.nodes().length === 3")
    assert browsing.api.asked("/v1/graph/nodes/Person:42/neighbors")


@pytest.mark.parametrize(
    "next_",
    [
        "//evil.example/ui/graph",
        "https://evil.example/ui/graph",
        "/ui/\\evil.example",
        "/\\evil.example/ui/",
        "javascript:alert(1)//ui/",
        "/ui/../v1/tasks",
        "/ui/graph\n//evil.example",
    ],
)
async def test_sign_in_refuses_to_go_anywhere_else(browsing: Browsing, next_: str) -> None:
    page = browsing.page
    graph_api(browsing.api, neighbourhood("Person:42", 2))
    await page.goto(browsing.url + "/ui/?next=" + quote(next_, safe=""))
    await sign_in(browsing)
    await page.wait_for_url(browsing.url + "/ui/graph", timeout=WAIT_MS)


# ---- the graph: relationships without the drawing library, a capped neighbourhood, zoom --


async def test_without_the_drawing_library_the_relationships_are_listed(
    browsing: Browsing,
) -> None:
    page = await signed_in(browsing)
    graph_api(browsing.api, neighbourhood("Person:42", 2))
    # As when the library is not installed: the page's script finds no window.cytoscape.
    await page.context.route(
        re.compile(r"/ui/static/vendor/cytoscape/"),
        lambda route: route.fulfill(status=200, content_type="text/javascript", body=""),
    )
    await page.goto(browsing.url + "/ui/graph?node=Person:42")
    edges = page.locator("#edges tr")
    await until(page, "document.querySelectorAll('#edges tr').length === 2")
    assert await page.locator("#drawn-edges").get_attribute("open") is not None
    assert await edges.first.locator("td").all_inner_texts() == [
        "Ann (Person:42)",
        "WORKS_AT",
        "Co 0 (Company:0)",
    ]
    assert await page.locator("#edge-count").inner_text() == "2"
    await screenshot(page, "console-graph-no-library.png")


async def test_a_capped_neighbourhood_says_it_is_not_whole(browsing: Browsing) -> None:
    page = await signed_in(browsing)
    graph_api(browsing.api, neighbourhood("Person:42", 100, truncated=True))
    await page.goto(browsing.url + "/ui/graph?node=Person:42")
    status = page.locator("p[role=status]", has_text="Person:42: the first 100 neighbours of more")
    await status.wait_for(timeout=WAIT_MS)
    assert "more neighbours than the 100 drawn" in await page.locator("#capped").inner_text()


async def test_a_whole_neighbourhood_says_nothing_of_a_cap(browsing: Browsing) -> None:
    page = await signed_in(browsing)
    graph_api(browsing.api, neighbourhood("Person:42", 1, truncated=False))
    await page.goto(browsing.url + "/ui/graph?node=Person:42")
    await page.locator("p[role=status]", has_text="Person:42: 1 neighbour,").wait_for(
        timeout=WAIT_MS
    )
    assert await page.locator("#capped").is_hidden()


async def test_a_small_neighbourhood_is_not_zoomed_until_labels_collide(
    browsing: Browsing,
) -> None:
    page = await signed_in(browsing)
    graph_api(browsing.api, neighbourhood("Person:42", 2))
    await page.goto(browsing.url + "/ui/graph?node=Person:42")
    await until(page, "!!window.spineGraph && window.spineGraph.nodes().length === 3")
    await page.locator("p[role=status]", has_text="2 neighbours").wait_for(timeout=WAIT_MS)
    assert await page.evaluate("window.spineGraph.zoom()") <= 1.6
    # Still centred: every node is inside the canvas.
    inside = await page.evaluate(
        "(() => { const cy = window.spineGraph, w = cy.width(), h = cy.height();"
        " return cy.nodes().every(n => { const p = n.renderedPosition();"
        " return p.x > 0 && p.x < w && p.y > 0 && p.y < h; }); })()"
    )
    assert inside is True
    await screenshot(page, "console-graph-small.png")


# ---- long values wrap inside their cells -------------------------------------------------


async def test_a_long_event_source_does_not_widen_the_page(browsing: Browsing) -> None:
    page = await signed_in(browsing)
    source = "https://ingest.example.com/" + "a1b2c3d4e5" * 15 + "?x=1"
    row = {
        "id": "e1",
        "received_at": "2026-01-02T03:04:05Z",
        "type": "com.example.a.very.long.event.type.name.without.spaces" * 2,
        "source": source,
        "subject": "s" * 120,
        "status": "dead_lettered",
        "attempts": 3,
        "reason": "r" * 200,
    }
    browsing.api.on("GET", "/v1/events", reply({"data": [row], "next_cursor": None}))
    browsing.api.on("GET", "/ui/api/mappings", reply({"data": {row["type"]: None}}))
    await page.goto(browsing.url + "/ui/events")
    await page.locator("#dlq-rows td", has_text="rrrr").wait_for(timeout=WAIT_MS)
    widths = await page.evaluate(
        "({ page: document.documentElement.scrollWidth, view: window.innerWidth,"
        " tables: [...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().right) })"
    )
    assert widths["page"] <= widths["view"]
    assert all(right <= widths["view"] for right in widths["tables"])
    await screenshot(page, "console-events-long-values.png")
