"""Model fetching against a real local HTTP server: resume, verification, failures."""

from __future__ import annotations

import hashlib
import random
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hsid.core.errors import ConfigError, InvalidInput, PermanentError, Unavailable
from hsid.model_files import fetch
from hsid.model_files.fetch import (
    ModelEntry,
    fetch_model,
    fetch_models,
    load_manifest,
)
from tests.model_files.manifests import write_manifest

PAYLOAD = random.Random(7).randbytes(3 * (1 << 20) + 12_345)  # several chunks, odd tail
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
SHIPPED_MANIFEST = Path(__file__).resolve().parents[2] / "models" / "manifest.toml"


@dataclass
class ModelServer:
    """What the test server serves and what it was asked for."""

    url: str  # filled in once the server listens
    body: bytes = PAYLOAD
    honour_range: bool = True
    cut_after: int | None = None  # close the connection after this many body bytes...
    cuts_left: int = 0  # ...on this many requests
    status: int = 200
    ranges: list[str | None] = field(default_factory=list)


SERVER = web.AppKey("server", ModelServer)


async def _serve(request: web.Request) -> web.StreamResponse:
    server: ModelServer = request.app[SERVER]
    server.ranges.append(request.headers.get("Range"))
    if server.status != 200:
        return web.Response(status=server.status)
    start = 0
    match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
    if match and server.honour_range:
        start = int(match[1])
    body = server.body[start:]
    resp = web.StreamResponse(status=206 if start else 200)
    resp.content_length = len(body)
    if start:
        resp.headers["Content-Range"] = f"bytes {start}-{len(server.body) - 1}/{len(server.body)}"
    await resp.prepare(request)
    if server.cut_after is not None and server.cuts_left > 0:
        server.cuts_left -= 1
        await resp.write(body[: server.cut_after])
        assert request.transport is not None
        request.transport.close()  # mid-body, as a dropped link would
        return resp
    await resp.write(body)
    await resp.write_eof()
    return resp


@pytest.fixture
async def model_server() -> AsyncIterator[ModelServer]:
    server = ModelServer(url="")
    app = web.Application()
    app[SERVER] = server
    app.router.add_get("/model.bin", _serve)
    test_server = TestServer(app, host="127.0.0.1", port=0)
    await test_server.start_server()
    server.url = str(test_server.make_url("/model.bin"))
    yield server
    await test_server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=fetch.HTTP_TIMEOUT) as client:
        yield client


@pytest.fixture
def progress_lines() -> list[str]:
    return []


@pytest.fixture
def progress(progress_lines: list[str]) -> Callable[[str], None]:
    return progress_lines.append


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "RETRY_DELAY_SECONDS", 0.0)


def _entry(url: str, **changes: object) -> ModelEntry:
    entry = ModelEntry(
        name="test-detector",
        role="detector",
        config_key="detector.model",
        filename="model.onnx",
        url=url,
        sha256=PAYLOAD_SHA,
        size=len(PAYLOAD),
        licence="Apache-2.0",
    )
    return replace(entry, **changes)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- fetch_model -----------------------------------------------------------------------------


async def test_good_file_is_downloaded_verified_and_renamed(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
    progress_lines: list[str],
) -> None:
    path = await fetch_model(_entry(model_server.url), tmp_path, session, progress)

    assert path == tmp_path / "model.onnx"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "model.onnx.part").exists()
    assert model_server.ranges == [None]
    assert any("%" in line and "MB/s" in line for line in progress_lines)
    assert "verified" in progress_lines[-1]


async def test_verified_file_already_present_is_not_fetched_again(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
    progress_lines: list[str],
) -> None:
    (tmp_path / "model.onnx").write_bytes(PAYLOAD)

    await fetch_model(_entry(model_server.url), tmp_path, session, progress)

    assert model_server.ranges == []
    assert progress_lines == [
        f"test-detector: already present and verified ({tmp_path / 'model.onnx'})"
    ]


async def test_corrupt_file_is_refused_and_removed(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
) -> None:
    model_server.body = bytes(len(PAYLOAD))  # right length, wrong bytes

    with pytest.raises(PermanentError, match="sha256 mismatch") as caught:
        await fetch_model(_entry(model_server.url), tmp_path, session, progress)

    assert PAYLOAD_SHA in str(caught.value)
    assert hashlib.sha256(model_server.body).hexdigest() in str(caught.value)
    assert not (tmp_path / "model.onnx").exists()
    assert not (tmp_path / "model.onnx.part").exists()


async def test_interrupted_download_resumes_with_a_range_request(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
) -> None:
    half = len(PAYLOAD) // 2
    model_server.cut_after, model_server.cuts_left = half, 1

    path = await fetch_model(_entry(model_server.url), tmp_path, session, progress)

    assert model_server.ranges == [None, f"bytes={half}-"]
    assert path.read_bytes() == PAYLOAD


async def test_partial_file_from_an_earlier_run_is_resumed_and_hashed_whole(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
) -> None:
    (tmp_path / "model.onnx.part").write_bytes(PAYLOAD[:1000])

    path = await fetch_model(_entry(model_server.url), tmp_path, session, progress)

    assert model_server.ranges == ["bytes=1000-"]
    assert path.read_bytes() == PAYLOAD


async def test_server_ignoring_range_restarts_from_zero(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
    progress_lines: list[str],
) -> None:
    model_server.honour_range = False
    (tmp_path / "model.onnx.part").write_bytes(b"stale bytes that are not a prefix")

    path = await fetch_model(_entry(model_server.url), tmp_path, session, progress)

    assert model_server.ranges == ["bytes=33-"]
    assert path.read_bytes() == PAYLOAD
    assert any("ignored the Range request" in line for line in progress_lines)


async def test_connection_that_keeps_dropping_gives_up_and_keeps_the_part(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
) -> None:
    model_server.cut_after, model_server.cuts_left = 1000, 99

    with pytest.raises(Unavailable, match="run the fetch again to resume"):
        await fetch_model(_entry(model_server.url), tmp_path, session, progress)

    assert len(model_server.ranges) == fetch.MAX_ATTEMPTS
    assert (tmp_path / "model.onnx.part").read_bytes() == PAYLOAD[: 1000 * fetch.MAX_ATTEMPTS]
    assert not (tmp_path / "model.onnx").exists()


async def test_unreachable_host_says_offline_and_keeps_the_part(
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
) -> None:
    (tmp_path / "model.onnx.part").write_bytes(PAYLOAD[:500])
    url = f"http://127.0.0.1:{_closed_port()}/model.bin"

    with pytest.raises(Unavailable, match="appears to be offline or the host is unreachable"):
        await fetch_model(_entry(url), tmp_path, session, progress)

    assert (tmp_path / "model.onnx.part").read_bytes() == PAYLOAD[:500]


async def test_http_not_found_is_permanent(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
) -> None:
    model_server.status = 404

    with pytest.raises(PermanentError, match="HTTP 404"):
        await fetch_model(_entry(model_server.url), tmp_path, session, progress)


async def test_size_disagreeing_with_the_manifest_fails_before_downloading(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
) -> None:
    entry = _entry(model_server.url, size=len(PAYLOAD) + 1)

    with pytest.raises(PermanentError, match="the manifest says"):
        await fetch_model(entry, tmp_path, session, progress)

    assert not (tmp_path / "model.onnx").exists()


async def test_file_without_checksum_is_never_called_verified_but_held_to_its_first_hash(
    model_server: ModelServer,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    progress: Callable[[str], None],
    progress_lines: list[str],
) -> None:
    entry = _entry(model_server.url, sha256="", size=0)
    path = await fetch_model(entry, tmp_path, session, progress)
    assert path.read_bytes() == PAYLOAD
    assert "NOT verified: no checksum in manifest" in progress_lines[-1]
    assert PAYLOAD_SHA in progress_lines[-1]
    pin = tmp_path / "model.onnx.sha256"
    assert pin.read_text() == f"{PAYLOAD_SHA}  model.onnx\n"  # `sha256sum -c` reads it

    path.write_bytes(PAYLOAD[:-1] + b"\0")  # damaged on disk after the first download
    again = await fetch_model(entry, tmp_path, session, progress)

    assert again.read_bytes() == PAYLOAD
    assert any("does not match the sha256 recorded at its first" in x for x in progress_lines)
    assert model_server.ranges == [None, None]

    await fetch_model(entry, tmp_path, session, progress)
    assert "matches the sha256 recorded at its first download" in progress_lines[-1]
    assert "NOT verified: no checksum in manifest" in progress_lines[-1]
    assert not any(line.endswith("verified") for line in progress_lines)

    model_server.body = PAYLOAD[::-1]  # the URL now serves other bytes
    path.unlink()
    with pytest.raises(PermanentError, match=f"expected {PAYLOAD_SHA} .*delete {pin}"):
        await fetch_model(entry, tmp_path, session, progress)
    assert not path.exists() and not (tmp_path / "model.onnx.part").exists()


# --- fetch_models ----------------------------------------------------------------------------


def _write_manifest(path: Path, url: str, names: tuple[str, ...] = ("small",)) -> Path:
    return write_manifest(path, url, names, PAYLOAD)


async def test_fetch_models_fetches_only_the_named_entries(
    model_server: ModelServer,
    tmp_path: Path,
    progress: Callable[[str], None],
) -> None:
    manifest = _write_manifest(tmp_path / "manifest.toml", model_server.url, ("a", "b"))
    dest = tmp_path / "dest" / "models"

    paths = await fetch_models(manifest, dest, ["b"], progress)

    assert paths == [dest / "b.gguf"]
    assert (dest / "b.gguf").exists()
    assert not (dest / "a.gguf").exists()


async def test_fetch_models_rejects_unknown_names(
    model_server: ModelServer,
    tmp_path: Path,
    progress: Callable[[str], None],
) -> None:
    manifest = _write_manifest(tmp_path / "manifest.toml", model_server.url)

    with pytest.raises(InvalidInput, match="unknown model nope; the manifest has small"):
        await fetch_models(manifest, tmp_path / "dest", ["nope"], progress)

    assert model_server.ranges == []


# --- load_manifest ---------------------------------------------------------------------------


def test_shipped_manifest_is_valid() -> None:
    entries = load_manifest(SHIPPED_MANIFEST)

    assert {e.role for e in entries} == {"detector", "analyzer", "embedder", "vehicle_embedder"}
    assert any(e.role == "analyzer" and e.sha256 and e.size for e in entries)
    # Re-identification: OSNet for people, a CLIP image encoder for vehicles, each checksummed.
    assert all(e.sha256 for e in entries if e.role in ("embedder", "vehicle_embedder"))


def test_shipped_hugging_face_urls_are_pinned_to_a_revision() -> None:
    """A branch URL can start serving other bytes; a commit can't, so a recorded size holds."""
    hub_urls = [e.url for e in load_manifest(SHIPPED_MANIFEST) if "huggingface.co" in e.url]

    assert hub_urls
    for url in hub_urls:
        assert re.search(r"/resolve/[0-9a-f]{40}/", url), url


VALID_TABLE = {
    "name": '"m"',
    "role": '"detector"',
    "config_key": '"detector.model"',
    "filename": '"m.onnx"',
    "url": '"https://example.org/m.onnx"',
    "sha256": '""',
    "size": "0",
    "licence": '"Apache-2.0"',
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": None}, r"entry 1 \('m'\): missing field role"),
        ({"role": '"camera"'}, r"\('m'\): field role must be one of detector, analyzer"),
        ({"config_key": '"analyzer.model"'}, r"field config_key must be 'detector.model'"),
        ({"sha256": '"ABC"'}, r"field sha256 must be 64 lowercase hex"),
        ({"size": "-1"}, r"field size must be a byte count"),
        ({"size": '"12"'}, r"field size must be a int"),
        ({"filename": '"../m.onnx"'}, r"field filename must be a plain file name"),
        ({"url": '"ftp://example.org/m"'}, r"field url must be an http\(s\) URL"),
        ({"colour": '"red"'}, r"unknown field colour"),
    ],
)
def test_manifest_errors_name_the_entry_and_field(
    tmp_path: Path,
    change: dict[str, str | None],
    message: str,
) -> None:
    fields = {k: v for k, v in (VALID_TABLE | change).items() if v is not None}
    path = tmp_path / "manifest.toml"
    path.write_text("[[model]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items()))

    with pytest.raises(ConfigError, match=message):
        load_manifest(path)


def test_manifest_rejects_duplicate_names(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path / "manifest.toml", "https://example.org/x", ("a", "a"))

    with pytest.raises(ConfigError, match="duplicate name a"):
        load_manifest(path)


def test_manifest_without_models_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text("title = 'nothing here'\n")

    with pytest.raises(ConfigError, match=r"one or more \[\[model\]\] tables"):
        load_manifest(path)

