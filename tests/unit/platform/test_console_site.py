"""The console's pages without a browser: on and off, headers, missing assets, pinned tarballs."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spine.platform.app.api import create_app
from spine.platform.app.console import assets
from spine.platform.app.console.assets import AssetError, VendorAsset
from spine.platform.settings import Settings


async def client_for(console: bool) -> AsyncIterator[httpx.AsyncClient]:
    # No lifespan: the pages need no backing service, and nothing here calls the API.
    app = create_app(Settings(_env_file=None, api={"console": console}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        yield client


@pytest.fixture
async def console() -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(True):
        yield client


async def test_the_console_serves_its_pages_with_a_strict_policy(
    console: httpx.AsyncClient,
) -> None:
    moved = await console.get("/ui")
    assert moved.status_code == 307
    assert moved.headers["location"] == "/ui/"
    for path in ("/ui/", "/ui/graph", "/ui/tasks", "/ui/tasks/abc", "/ui/routing", "/ui/events"):
        page = await console.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "<script>" not in page.text  # no inline script: the policy would refuse it
    script = await console.get("/ui/static/console.js")
    assert script.status_code == 200
    assert "sessionStorage" in script.text
    # Pages are not part of the API's contract.
    document = (await console.get("/openapi.json")).json()
    assert not [path for path in document["paths"] if path.startswith("/ui")]


async def test_a_task_id_is_escaped_in_its_page(console: httpx.AsyncClient) -> None:
    page = await console.get("/ui/tasks/%3Cimg%20src%3Dx%3E")
    assert page.status_code == 200
    assert "<img src=x>" not in page.text
    assert "&lt;img src=x&gt;" in page.text


async def test_the_console_switched_off_is_not_found() -> None:
    async for client in client_for(False):
        for path in ("/ui", "/ui/", "/ui/graph", "/ui/static/console.js", "/ui/api/session"):
            assert (await client.get(path)).status_code == 404, path


async def test_the_lookups_need_a_key(console: httpx.AsyncClient) -> None:
    answer = await console.get("/ui/api/session")
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "unauthorized"


async def test_missing_assets_are_named_on_the_page(
    console: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(assets, "VENDOR_DIR", tmp_path)
    page = await console.get("/ui/graph")
    assert "drawing libraries are not installed" in page.text
    assert "cytoscape@" in page.text
    assert "cytoscape.min.js" not in page.text  # no script tag that would 404
    routing = await console.get("/ui/routing")
    assert "chart.umd.min.js" not in routing.text


def tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, body in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


class Answer:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def read(self) -> bytes:
        return self.body


def test_a_tarball_is_extracted_only_when_it_matches_its_pin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    body = tarball({"dist/lib.min.js": b"lib()", "LICENSE": b"MIT", "dist/other.js": b"x"})
    pin = "sha512-" + base64.b64encode(hashlib.sha512(body).digest()).decode()
    monkeypatch.setattr(assets, "VENDOR_DIR", tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Answer(body))
    good = VendorAsset(
        package="lib", version="1.0.0", integrity=pin, files=("dist/lib.min.js", "LICENSE")
    )
    bad = VendorAsset(
        package="evil", version="1.0.0", integrity="sha512-" + "A" * 86 + "==", files=("LICENSE",)
    )

    monkeypatch.setattr(assets, "ASSETS", (bad,))
    with pytest.raises(AssetError, match="refusing it"):
        assets.ensure_assets()
    assert not (tmp_path / "evil").exists()

    monkeypatch.setattr(assets, "ASSETS", (good,))
    assert assets.missing_assets() == ["lib@1.0.0"]
    assert assets.ensure_assets() == ["lib@1.0.0"]
    assert (tmp_path / "lib" / "lib.min.js").read_bytes() == b"lib()"
    assert not (tmp_path / "lib" / "other.js").exists()
    assert assets.missing_assets() == []
    assert assets.ensure_assets() == []  # present: not fetched again
