"""The review page: `/` and its static files, served from the package (no build step, no CDN).

The page is plain HTML, CSS and JavaScript modules in `hsid/api/static/`; it reads the
same JSON API and WebSocket as any client. Its routes are public, because they hold no
data: with API keys on, the page asks for a key and sends it with every call it makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from aiohttp import web

from hsid.api.fields import Field, Shape, Text
from hsid.api.routing import ApiRoutes, Call
from hsid.core.errors import NotFound

STATIC_DIR = Path(__file__).with_name("static")
INDEX = "index.html"
# Only these kinds are served, with our content type rather than a guess from the name.
STATIC_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


class StaticPath(Shape):
    name: Annotated[str, Text(70, pattern=r"[a-z0-9_-]{1,64}\.(js|css|svg)")] = Field(
        description="a file of the page, e.g. app.js")


# The page loads only its own files; images come in as blob: URLs (fetched with the key)
# and the WebSocket goes back to this origin. Nothing may frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
        "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (the ETag makes that cheap), so an upgrade shows at once.
    "Cache-Control": "no-cache",
}

api = ApiRoutes("page")


def _file(name: str) -> web.FileResponse:
    path = STATIC_DIR / name
    content_type = "text/html" if name == INDEX else STATIC_TYPES.get(path.suffix)
    if content_type is None or not path.is_file():
        raise NotFound(f"{name} not found")
    response = web.FileResponse(path, headers=PAGE_HEADERS)
    response.content_type = content_type
    if content_type.startswith("text/"):
        response.charset = "utf-8"
    return response


@api.get("/", "The review page (HTML; asks for an API key when keys are on)",
         media_types=("text/html",), public=True)
async def get_page(call: Call) -> web.StreamResponse:
    return _file(INDEX)


@api.get("/static/{name}", "A script, style sheet or icon of the review page",
         path_params=StaticPath, public=True,
         media_types=tuple(sorted(set(STATIC_TYPES.values()))))
async def get_static(call: Call) -> web.StreamResponse:
    return _file(call.path["name"])
