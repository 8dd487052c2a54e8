"""The web console in a real browser: sign in, explore the graph, follow a task live, see spend.

Headless Chromium (Debian's ``chromium``) driven by Playwright's async API in the test's own
event loop, next to the running platform. Where the browser, Playwright or the console's
assets cannot be had, the tests skip and say why. Screenshots go to ``tests/artifacts/``
(ignored by git); ``docs/console.png`` (the README's picture) is written when it is missing,
or when ``SPINE_CONSOLE_SCREENSHOT=1`` asks for a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import pytest
from pydantic import BaseModel

from spine.platform.app.console.assets import AssetError, ensure_assets
from spine.tools.tool import ModelArguments, Tool, ToolContext
from support.databases import create_database
from support.fake_models import FakeModelServer, ModelRequest, Rule, ToolCall
from support.knowledge import (
    clear_tenants,
    delete_event_streams,
    event_consumers,
    eventually,
    hired,
    met,
)
from support.knowledge import knowledge as knowledge_settings
from support.live_platform import RunningPlatform, running_platform

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

# The browser first: where there is none, the tests skip before a platform is started.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("browser")]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
README_PICTURE = ROOT / "docs" / "console.png"
CHROMIUM = os.environ.get("SPINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 30_000  # a bound for a loaded machine, not a timing assertion


GRAPH = [
    hired(1, "c1", 0, "Ann Acme"),
    hired(2, "c1", 0, "Bob Acme"),
    hired(3, "c2", 0, "Cy Acme"),
    met(2, 3),
    met(3, 4),
]


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


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    # A laptop screen: the console must read well at 1366x768.
    context = await browser.new_context(viewport={"width": 1366, "height": 768})
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            # The sign-in tries a wrong key first: its 401 is expected.
            if message.type == "error" and "status of 401" not in message.text
            else None
        ),
    )
    yield opened
    await context.close()
    # A script error or a refused script/style (the Content-Security-Policy) fails the test.
    assert problems == [], "\n".join(problems)


class LaunchArguments(BaseModel):
    target: str


@pytest.fixture(scope="module")
async def spine(
    services: Any, fake_models: FakeModelServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningPlatform]:
    """One platform for the module's tests (a worker runs the gated agent and its tool)."""
    folder = tmp_path_factory.mktemp("console-agents")
    (folder / "gated.yaml").write_text(
        "name: gated\ndescription: asks before launching\ninstructions: You are gated.\n"
        "model: {models: [llama3.2]}\ntools: [launch]\nmax_steps: 3\napproval_timeout: 3600\n"
    )

    async def launch(args: LaunchArguments, ctx: ToolContext) -> str:
        return f"launched {args.target}"

    tool = Tool(
        name="launch",
        description="Launch something irreversible.",
        arguments=ModelArguments(LaunchArguments),
        handler=launch,
        effect="external",
        needs_approval=True,
    )
    await delete_event_streams(services.nats_url)
    await delete_task_streams(services.nats_url)
    database = create_database(services.database_url)
    async with running_platform(
        services, database, fake_models, agents_dir=folder, knowledge=knowledge_settings()
    ) as running:
        for worker in running.workers:
            worker.tools.register(tool)
        await clear_tenants(running.platform, running.tenant)
        yield running


async def delete_task_streams(nats_url: str) -> None:
    """Delete the task streams, so no task of an earlier test is delivered."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for stream in ("TASKS", "TASKS_DLQ", "OUTCOMES"):
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
    await nc.close()


async def sign_in(page: Page, spine: RunningPlatform, path: str) -> None:
    """Open a console page, be sent to the sign-in form, sign in, land back on the page."""
    await page.goto(f"{spine.url}{path}", wait_until="commit")
    await page.wait_for_url("**/ui/?next=*", timeout=WAIT_MS)
    await page.get_by_label("API key").fill("not-a-key")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("This key is not valid").wait_for(timeout=WAIT_MS)
    await page.get_by_label("API key").fill(spine.key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{spine.url}{path}", timeout=WAIT_MS)
    await page.get_by_text(f"{spine.tenant} · admin").wait_for(timeout=WAIT_MS)
    stored = await page.evaluate("sessionStorage.getItem('spine.key')")
    assert stored == spine.key
    assert spine.key not in page.url


async def screenshot(page: Page, name: str, *, readme: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / name)
    if readme and (not README_PICTURE.exists() or os.environ.get("SPINE_CONSOLE_SCREENSHOT")):
        README_PICTURE.parent.mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / name, README_PICTURE)


async def until(page: Page, expression: str) -> None:
    """Poll a JavaScript expression until it is true (waiting in the page would need eval)."""
    deadline = asyncio.get_running_loop().time() + WAIT_MS / 1000
    while not await page.evaluate(expression):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still false after {WAIT_MS} ms: {expression}")
        await asyncio.sleep(0.05)


async def node_count(page: Page) -> int:
    count: int = await page.evaluate("window.spineGraph.nodes().length")
    return count


async def test_sign_in_search_draw_and_expand_the_graph(spine: RunningPlatform, page: Page) -> None:
    answer = await spine.client.post(
        "/v1/events",
        content=json.dumps(GRAPH),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert answer.status_code == 202, answer.text

    async def statuses() -> set[str]:
        page_ = (await spine.client.get("/v1/events", params={"limit": 50})).json()["data"]
        return {e["status"] for e in page_}

    async with event_consumers(spine.platform):
        await eventually(statuses, lambda s: s == {"mapped"})

    await sign_in(page, spine, "/ui/graph")
    await page.get_by_label("Name or value contains").fill("Bob")
    await page.get_by_role("button", name="Search").click()
    # One match is drawn at once: Bob, his company and the person he met.
    await page.get_by_role("heading", name="Node Person:2").wait_for(timeout=WAIT_MS)
    await until(page, "window.spineGraph.nodes().length === 3")
    assert await node_count(page) == 3
    assert await page.locator("#node-props").inner_text() != ""
    await page.locator("#node-events td", has_text="com.example.person.hired").first.wait_for(
        timeout=WAIT_MS
    )

    # Click Cy (Person:3) on the canvas: her company and Person:4 join the drawing.
    box = await page.locator("#cy").bounding_box()
    assert box is not None
    where = await page.evaluate(
        "(() => { const p = window.spineGraph.getElementById('Person:3').renderedPosition();"
        " return [p.x, p.y]; })()"
    )
    await page.mouse.click(box["x"] + where[0], box["y"] + where[1])
    await until(page, "window.spineGraph.nodes().length === 5")
    drawn = await page.evaluate("window.spineGraph.nodes().map(n => n.id()).sort()")
    assert drawn == ["Company:c1", "Company:c2", "Person:2", "Person:3", "Person:4"]
    await page.get_by_role("heading", name="Node Person:3").wait_for(timeout=WAIT_MS)
    assert "Cy Acme" in await page.locator("#node-props").inner_text()
    await screenshot(page, "console-graph.png", readme=True)

    # Only one relationship type: KNOWS leaves Bob's company out.
    await page.get_by_label("KNOWS").check()
    await page.get_by_role("button", name="Apply filters").click()
    await until(page, "window.spineGraph.nodes().length === 3")
    drawn = await page.evaluate("window.spineGraph.nodes().map(n => n.id()).sort()")
    assert drawn == ["Person:2", "Person:3", "Person:4"]

    # The events the graph came from, with their status.
    await page.get_by_role("link", name="Events").click()
    await page.locator("#event-rows td", has_text="com.example.person.met").first.wait_for(
        timeout=WAIT_MS
    )
    assert await page.locator("#event-rows .badge-mapped").count() == len(GRAPH)
    # What each type's mapping writes.
    hired_row = page.locator("#event-rows tr", has_text="com.example.person.hired").first
    assert "Company, Person · WORKS_AT" in await hired_row.inner_text()
    await page.locator("#dlq-rows td", has_text="No dead letter.").wait_for(timeout=WAIT_MS)
    await screenshot(page, "console-events.png")


def first_call(request: ModelRequest) -> bool:
    return request.last_role != "tool"


def after_tool(request: ModelRequest) -> bool:
    return request.last_role == "tool"


async def test_a_task_timeline_updates_live_and_spend_is_charted(
    spine: RunningPlatform, models: FakeModelServer, page: Page
) -> None:
    models.add(
        Rule(
            when=first_call,
            containing="launch it",
            tool_calls=[ToolCall(name="launch", arguments={"target": "moon"}, id="l1")],
        )
    )
    models.add(Rule(when=after_tool, reply=lambda r: f"done: {r.messages[-1]['content']}"))
    submitted = await spine.client.post(
        "/v1/tasks", json={"agent": "gated", "input": {"prompt": "launch it"}}
    )
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["id"]

    await sign_in(page, spine, "/ui/tasks")
    await page.get_by_role("link", name=task_id).click()
    await page.wait_for_url(f"**/ui/tasks/{task_id}", timeout=WAIT_MS)
    # The approval arrives over the feed; the page offers the buttons.
    await page.get_by_role("heading", name="Waiting for your approval").wait_for(timeout=WAIT_MS)
    assert "moon" in await page.locator("#approval-args").inner_text()
    await page.evaluate("window.sameDocument = true")  # gone if the page reloaded
    await page.get_by_role("button", name="Approve").click()

    # The rest of the run reaches the open page over SSE, without a reload.
    await page.locator("#timeline li[data-type='final']").wait_for(timeout=WAIT_MS)
    await page.locator("#task-state", has_text="succeeded").wait_for(timeout=WAIT_MS)
    assert await page.evaluate("window.sameDocument") is True
    types = await page.locator("#timeline li").evaluate_all(
        "items => items.map(i => i.dataset.type)"
    )
    assert (
        types.index("approval_requested") < types.index("tool_call_started") < types.index("final")
    )
    assert await page.locator("#task-result").inner_text() == "done: launched moon"
    await page.locator("#task-calls tr").nth(1).wait_for(timeout=WAIT_MS)
    assert "2 model calls" in await page.locator("#task-cost").inner_text()
    await screenshot(page, "console-task.png")

    await page.get_by_role("link", name="Routing and spend").click()
    await until(
        page, "!!(window.spineCharts && window.spineCharts.group && window.spineCharts.day)"
    )
    calls = await page.evaluate(
        "window.spineCharts.group.data.datasets[1].data.reduce((a, b) => a + b, 0)"
    )
    assert calls == 2
    models_drawn = await page.evaluate("window.spineCharts.day.data.datasets.map(d => d.label)")
    assert models_drawn == ["llama3.2"]
    # The canvas holds a drawing, not a blank box.
    painted = await page.evaluate(
        "(() => { const c = document.getElementById('chart-group');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true; return false; })()"
    )
    assert painted is True
    await page.locator("#breakers td", has_text="llama3.2").first.wait_for(timeout=WAIT_MS)
    await screenshot(page, "console-routing.png")
