"""Listing model files: what is present in the models directory and what the config names."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from hsid.model_files.inventory import list_models
from tests.model_files.manifests import write_manifest

PAYLOAD = bytes(3 * (1 << 20) + 12_345)  # 3.2 MB; listing compares sizes, never hashes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
SHIPPED_MANIFEST = Path(__file__).resolve().parents[2] / "models" / "manifest.toml"


def test_list_models_reports_files_and_configured_paths(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "manifest.toml", "https://example.org/x",
                              ("done", "half", "absent", "wrong"), PAYLOAD)
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "done.gguf").write_bytes(PAYLOAD)
    (dest / "half.gguf.part").write_bytes(PAYLOAD[:2_000_000])
    (dest / "wrong.gguf").write_bytes(b"short")
    configured = {
        "detector.model": "",
        "analyzer.model": str(dest / "done.gguf"),
        "other.model": str(dest / "gone.gguf"),
    }

    text = "\n".join(list_models(manifest, dest, configured))

    assert re.search(r"done .*done\.gguf: present, 3\.2 MB, size matches$", text, re.M)
    assert re.search(
        r"half .*: partial, 2\.0 MB of 3\.2 MB; `hsid models fetch half` resumes", text
    )
    assert "absent.gguf: missing; `hsid models fetch absent` downloads it" in text
    assert "wrong.gguf: present, 0.0 MB, WRONG SIZE" in text
    assert "detector.model = (not set)" in text
    assert f"analyzer.model = {dest / 'done.gguf'}: exists, 3.2 MB, manifest entry done" in text
    assert f"other.model = {dest / 'gone.gguf'}: MISSING, not from the manifest" in text


def test_list_models_flags_files_without_checksum(tmp_path: Path) -> None:
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "rtdetrv2_r18vd_120e_coco.onnx").write_bytes(b"x")

    lines = list_models(SHIPPED_MANIFEST, dest, {})

    line = next(line for line in lines if "rtdetrv2_r18vd_120e_coco.onnx" in line)
    assert "unverified: no checksum in manifest" in line


def test_list_models_says_when_a_first_download_hash_is_recorded(tmp_path: Path) -> None:
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "rtdetrv2_r18vd_120e_coco.onnx").write_bytes(b"x")
    (dest / "rtdetrv2_r18vd_120e_coco.onnx.sha256").write_text(
        f"{hashlib.sha256(b'x').hexdigest()}  rtdetrv2_r18vd_120e_coco.onnx\n"
    )

    lines = list_models(SHIPPED_MANIFEST, dest, {})

    line = next(line for line in lines if "rtdetrv2_r18vd_120e_coco.onnx" in line)
    assert "unverified: no checksum in manifest" in line
    assert "sha256 recorded at first download" in line
