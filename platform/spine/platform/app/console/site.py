"""The console's pages: server-side templates that the signed-in browser fills from the API.

A page is a shell (navigation, forms, empty tables and canvases) rendered by Jinja2; its
JavaScript (``static/``, no build step) reads the key from ``sessionStorage`` and calls the JSON
API with it as ``Authorization: Bearer``, so every view is scoped exactly as the API scopes
that key. The pages hold no tenant data themselves and need no key to be served; every read
behind them does.

Why ``sessionStorage`` and a Bearer header rather than a cookie: the API already authenticates
that way on every route, so the console adds no second way in; a browser never sends the key
on its own, so no request can be forged from another site (a cookie would need CSRF tokens on
every ``POST``, approvals included); and the key is gone when the tab closes. Script injection
is what could read it, so the pages forbid inline and foreign scripts (a strict
Content-Security-Policy) and the JavaScript writes text, never HTML. The key never travels in
a URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from spine.platform.app.console import lookups
from spine.platform.app.console.assets import ASSETS

__all__ = ["install"]

HERE = Path(__file__).resolve().parent
PREFIX = "/ui"

# No inline script or style attribute in the templates; the libraries set styles through the
# DOM (allowed), and draw on canvases.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

PAGES = (
    ("graph", "Graph explorer"),
    ("tasks", "Tasks"),
    ("routing", "Routing and spend"),
    ("events", "Events"),
)

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def install(app: FastAPI) -> None:
    """Serve the console at ``/ui`` on ``app``: pages, static files and its lookups."""
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
    app.include_router(lookups.router)


def _render(request: Request, template: str, page: str, **context: object) -> HTMLResponse:
    vendor = {
        a.package: f"{PREFIX}/static/vendor/{a.package}/{Path(a.files[0]).name}" for a in ASSETS
    }
    absent = [a for a in ASSETS if not a.present()]
    response = templates.TemplateResponse(
        request,
        template,
        {
            "page": page,
            "pages": PAGES,
            "missing_assets": [f"{a.package}@{a.version}" for a in absent],
            "missing_packages": {a.package for a in absent},
            "vendor": vendor,
            **context,
        },
    )
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("", response_model=None)
async def root() -> RedirectResponse:
    """Send ``/ui`` to the sign-in page."""
    return RedirectResponse(f"{PREFIX}/", status_code=307)


@router.get("/", response_class=HTMLResponse)
async def sign_in(request: Request) -> HTMLResponse:
    """Show the sign-in form (the key stays in this tab's ``sessionStorage``)."""
    return _render(request, "signin.html", "signin")


@router.get("/graph", response_class=HTMLResponse)
async def graph(request: Request) -> HTMLResponse:
    """Show the graph explorer."""
    return _render(request, "graph.html", "graph")


@router.get("/tasks", response_class=HTMLResponse)
async def tasks(request: Request) -> HTMLResponse:
    """Show the task list."""
    return _render(request, "tasks.html", "tasks")


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
async def task(request: Request, task_id: str) -> HTMLResponse:
    """Show one task's timeline, live."""
    return _render(request, "task.html", "tasks", task_id=task_id)


@router.get("/routing", response_class=HTMLResponse)
async def routing(request: Request) -> HTMLResponse:
    """Show spend, routing weights and decisions, experiments and breakers."""
    return _render(request, "routing.html", "routing")


@router.get("/events", response_class=HTMLResponse)
async def events(request: Request) -> HTMLResponse:
    """Show recent events and the dead-lettered ones."""
    return _render(request, "events.html", "events")
