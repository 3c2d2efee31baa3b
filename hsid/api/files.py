"""Serving stored image files over HTTP (imaging/files.py says which may be read)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from hsid.imaging.files import IMAGE_TYPES


def image_response(path: Path) -> web.FileResponse:
    response = web.FileResponse(path)
    response.content_type = IMAGE_TYPES[path.suffix.lower()]
    return response
