"""The review page's routes: `/` and its static files, open without a key, nothing else served."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from hsid.api.page import STATIC_DIR
from tests.api.conftest import MakeClient


async def test_page_is_served_with_a_strict_policy(api_client: TestClient) -> None:
    response = await api_client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert '<script type="module" src="/static/app.js">' in await response.text()
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_every_static_file_is_served_with_its_type(api_client: TestClient) -> None:
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    names = [path.name for path in STATIC_DIR.iterdir() if path.suffix in types]
    assert {"app.js", "api.js", "style.css", "icon.svg"} <= set(names)
    for name in names:
        response = await api_client.get(f"/static/{name}")
        assert response.status == 200, name
        assert response.content_type == types[name[name.rindex("."):]]


async def test_only_the_page_files_are_served(api_client: TestClient) -> None:
    missing = await api_client.get("/static/nothing.js")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"
    for path in ("/static/index.html", "/static/..%2Fpage.py", "/static/app.JS"):
        response = await api_client.get(path)
        assert response.status in (400, 404), path


async def test_page_is_open_when_keys_are_on_but_the_api_is_not(
    make_client: MakeClient,
) -> None:
    client = await make_client({"api": {"api_key_enabled": True, "api_keys": ["ui:secret"]}})
    assert (await client.get("/")).status == 200
    assert (await client.get("/static/app.js")).status == 200
    assert (await client.get("/api/events")).status == 401
    assert (await client.get("/api/events", headers={"X-API-Key": "secret"})).status == 200
