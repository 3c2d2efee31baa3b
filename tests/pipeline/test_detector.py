"""Tests for hsid/pipeline/detector.py: decoding, the tiny model's round trip, providers."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper
from structlog.testing import capture_logs

from hsid.core.config import DetectorConfig
from hsid.core.errors import ConfigError, PermanentError
from hsid.model_files.tiny_detector import write_tiny_detector
from hsid.pipeline import detector as detector_module
from hsid.pipeline.detector import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    Detector,
    ObjectDetection,
    decode,
    engine_dir,
    provider_chain,
    tensorrt_profile,
    usable_providers,
)
from hsid.pipeline.image_format import image_end, image_header

MAX_PIXELS = DetectorConfig().max_pixels
RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR, as cv2 draws
BOX_TOLERANCE = 4  # pixels: one 640-grid step of a 1920-wide image, plus resize blur

Box = tuple[int, int, int, int]  # x, y, width, height


def draw(width: int, height: int, patches: dict[tuple[int, int, int], Box]) -> np.ndarray:
    """A plain grey BGR image with solid colour rectangles at the given boxes."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    for colour, (x, y, w, h) in patches.items():
        image[y : y + h, x : x + w] = colour
    return image


def encode(image: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, data = cv2.imencode(ext, image, [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [])
    assert ok
    return data.tobytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR chunk, with no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = zlib.crc32(b"IHDR" + ihdr)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", crc)


def assert_box(det: ObjectDetection, expected: Box) -> None:
    got = (det.bbox_x, det.bbox_y, det.bbox_width, det.bbox_height)
    assert all(abs(a - b) <= BOX_TOLERANCE for a, b in zip(got, expected, strict=True)), got


@pytest.fixture(params=["rtdetr", "hf"])
def tiny_model(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The tiny colour detector, once in each export interface."""
    return write_tiny_detector(tmp_path / f"tiny-{request.param}.onnx", request.param)


@pytest.fixture
def make_detector(tmp_path: Path) -> Callable[..., Detector]:
    """Builds and loads a Detector on a model with DetectorConfig overrides."""

    def make(model: Path, **overrides: Any) -> Detector:
        detector = Detector(DetectorConfig(model=str(model), **overrides), tmp_path / "engines")
        detector.load()
        return detector

    return make


def detect(detector: Detector, image: np.ndarray, ext: str = ".jpg") -> list[ObjectDetection]:
    return detector.infer([decode(encode(image, ext), MAX_PIXELS)])[0]


# --- The tiny model round trip ----------------------------------------------------------------


def test_red_patch_is_one_person_with_its_box_in_original_pixels(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    detector = make_detector(tiny_model)
    [person] = detect(detector, draw(1920, 1080, {RED: (600, 300, 300, 500)}))
    assert person.object_type == "person"
    assert person.confidence == pytest.approx(0.95)
    assert_box(person, (600, 300, 300, 500))


def test_blue_is_a_car_and_green_a_dog_best_first(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    detector = make_detector(tiny_model)
    image = draw(1280, 720, {BLUE: (100, 100, 200, 100), GREEN: (800, 400, 160, 240)})
    dog, car = detect(detector, image, ".png")
    assert (dog.object_type, dog.confidence) == ("dog", pytest.approx(0.8))
    assert (car.object_type, car.confidence) == ("car", pytest.approx(0.6))
    assert_box(dog, (800, 400, 160, 240))
    assert_box(car, (100, 100, 200, 100))


def test_plain_grey_image_yields_nothing(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    assert detect(make_detector(tiny_model, confidence=0.0), draw(800, 600, {})) == []


def test_confidence_threshold_drops_weaker_detections(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    image = draw(1920, 1080, {RED: (10, 10, 50, 80), BLUE: (500, 500, 300, 200)})
    assert [d.object_type for d in detect(make_detector(tiny_model), image)] == ["person", "car"]
    assert [d.object_type for d in detect(make_detector(tiny_model, confidence=0.7), image)] == [
        "person"
    ]
    assert detect(make_detector(tiny_model, confidence=0.96), image) == []


def test_threshold_equal_to_the_score_keeps_the_detection(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    # The model's 0.95 is 0.949999988 in float32; a 0.95 threshold must still keep it.
    detector = make_detector(tiny_model, confidence=0.95)
    [person] = detect(detector, draw(640, 640, {RED: (0, 0, 64, 64)}))
    assert person.confidence == 0.95


def test_class_allow_list_filters_detections(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    image = draw(1920, 1080, {RED: (10, 10, 50, 80), BLUE: (500, 500, 300, 200)})
    assert [d.object_type for d in detect(make_detector(tiny_model, classes=("car",)), image)] == [
        "car"
    ]


def test_batch_larger_than_batch_size_keeps_each_image_in_order(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    detector = make_detector(tiny_model, batch_size=2)
    images = [
        draw(1920, 1080, {RED: (100, 100, 200, 400)}),
        draw(640, 480, {}),
        draw(1024, 768, {BLUE: (0, 0, 1024, 100)}),
        draw(3000, 2000, {GREEN: (2500, 1500, 400, 400)}),
        draw(800, 800, {RED: (400, 0, 400, 800)}),
    ]
    results = detector.infer([decode(encode(image), MAX_PIXELS) for image in images])
    assert [[d.object_type for d in found] for found in results] == [
        ["person"], [], ["car"], ["dog"], ["person"]
    ]
    assert_box(results[2][0], (0, 0, 1024, 100))
    assert_box(results[3][0], (2500, 1500, 400, 400))
    assert detector.inference_fps > 0


def test_boxes_touching_the_edge_are_clamped_to_the_image(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    [person] = detect(make_detector(tiny_model), draw(1000, 700, {RED: (900, 600, 100, 100)}))
    assert person.bbox_x + person.bbox_width <= 1000
    assert person.bbox_y + person.bbox_height <= 700
    assert_box(person, (900, 600, 100, 100))


def test_large_jpeg_is_decoded_reduced_but_boxes_stay_in_original_pixels(
    make_detector: Callable[..., Detector], tmp_path: Path
) -> None:
    image = draw(5200, 2800, {RED: (4000, 1000, 800, 1200)})
    decoded = decode(encode(image), MAX_PIXELS)
    assert (decoded.width, decoded.height, decoded.mime) == (5200, 2800, "image/jpeg")
    assert decoded.pixels.shape == (700, 1300, 3)  # decoded at 1/4 by libjpeg
    assert decoded.tensor.shape == (3, 640, 640)
    assert decoded.tensor.dtype == np.float32
    detector = make_detector(write_tiny_detector(tmp_path / "tiny.onnx"))
    [person] = detector.infer([decoded])[0]
    assert abs(person.bbox_x - 4000) <= 10 and abs(person.bbox_width - 800) <= 20


def test_decode_gives_rgb_tensor_in_unit_range() -> None:
    decoded = decode(encode(draw(640, 640, {RED: (0, 0, 640, 640)}), ".png"), MAX_PIXELS)
    assert decoded.mime == "image/png"
    assert decoded.tensor[:, 320, 320].tolist() == [1.0, 0.0, 0.0]  # R first


# --- Bad images -------------------------------------------------------------------------------


def test_zero_bytes_are_refused() -> None:
    with pytest.raises(PermanentError, match="empty"):
        decode(b"", MAX_PIXELS)


def test_truncated_jpeg_is_decoded_as_far_as_it_goes() -> None:
    # An upload that stalled: the upper part of a cut snapshot is still evidence.
    data = encode(draw(1280, 720, {RED: (0, 0, 1280, 100)}))
    decoded = decode(data[: len(data) * 3 // 5], MAX_PIXELS)
    assert decoded.truncated
    assert decoded.pixels[50, 640].tolist() == pytest.approx([0, 0, 255], abs=3)  # BGR: red


@pytest.mark.parametrize("tail", [b"\x00" * 4096, bytes(range(256)) * 8 + b"\xff\xd8\xff"],
                         ids=["zero-padding", "junk"])
def test_bytes_after_the_end_of_image_are_not_the_image(tail: bytes) -> None:
    data = encode(draw(1280, 720, {RED: (0, 0, 100, 100)}))
    assert image_end(data + tail) == len(data)
    decoded = decode(data + tail, MAX_PIXELS)
    assert not decoded.truncated
    assert decoded.pixels[50, 50].tolist() == pytest.approx([0, 0, 255], abs=3)


def test_image_end_skips_an_exif_thumbnails_own_end_marker() -> None:
    data = encode(draw(320, 240, {}))
    # An APP1 segment holding a whole JPEG, as EXIF thumbnails are, placed after SOI.
    thumbnail = encode(draw(16, 16, {}))
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    with_thumbnail = data[:2] + app1 + data[2:]
    assert image_end(with_thumbnail) == len(with_thumbnail)
    assert image_end(with_thumbnail[: len(app1) + 200]) is None  # cut inside the scan


def test_truncated_png_is_refused() -> None:
    data = encode(np.random.default_rng(1).integers(0, 255, (300, 400, 3), np.uint8), ".png")
    with pytest.raises(PermanentError, match="could not be decoded"):
        decode(data[: len(data) // 2], MAX_PIXELS)


def test_text_named_jpg_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(PermanentError, match="not a JPEG or PNG"):
        decode(path.read_bytes(), MAX_PIXELS)


def test_huge_png_header_is_refused_without_decoding() -> None:
    data = png_header(30_000, 30_000)
    assert image_header(data) == ("image/png", 30_000, 30_000)
    with pytest.raises(PermanentError, match=r"30000x30000 .* over the limit"):
        decode(data, MAX_PIXELS)


def test_jpeg_over_max_pixels_is_refused_from_its_header() -> None:
    data = encode(draw(1000, 1000, {}))
    assert image_header(data) == ("image/jpeg", 1000, 1000)
    with pytest.raises(PermanentError, match="over the limit of 999999"):
        decode(data, 999_999)


def test_jpeg_without_a_frame_header_is_refused() -> None:
    with pytest.raises(PermanentError, match="no frame"):
        decode(b"\xff\xd8\xff\xe0\x00\x04ab\xff\xd9", MAX_PIXELS)


# --- Loading and providers --------------------------------------------------------------------


def test_provider_in_use_is_reported_and_logged(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    with capture_logs() as logs:
        detector = make_detector(tiny_model, threads=3)
    [loaded] = [entry for entry in logs if entry["event"] == "detector_loaded"]
    assert loaded["provider"] == detector.provider
    assert loaded["threads"] == 3
    assert loaded["interface"] == detector.interface == tiny_model.stem.removeprefix("tiny-")
    assert detector.provider in onnxruntime.get_available_providers()


def test_threads_default_to_half_the_cores(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    with capture_logs() as logs:
        make_detector(tiny_model)
    [loaded] = [entry for entry in logs if entry["event"] == "detector_loaded"]
    assert loaded["threads"] == max(1, (os.cpu_count() or 1) // 2)


def test_require_gpu_refuses_a_cpu_only_session(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    if make_detector(tiny_model).provider != CPU_PROVIDER:
        pytest.skip("a GPU provider is active on this machine")
    with pytest.raises(ConfigError, match="no GPU execution provider is active") as caught:
        make_detector(tiny_model, require_gpu=True)
    assert "onnxruntime-gpu" in str(caught.value)


def test_require_gpu_loads_when_a_gpu_provider_is_active(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    if make_detector(tiny_model).provider == CPU_PROVIDER:
        pytest.skip("no GPU provider is active on this machine")
    assert make_detector(tiny_model, require_gpu=True).provider != CPU_PROVIDER


def test_missing_model_is_a_config_error(
    make_detector: Callable[..., Detector], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"detector\.model"):
        make_detector(tmp_path / "absent.onnx")


def test_unknown_class_is_a_config_error(
    tiny_model: Path, make_detector: Callable[..., Detector]
) -> None:
    with pytest.raises(ConfigError, match="unicorn"):
        make_detector(tiny_model, classes=("person", "unicorn"))


def test_model_with_another_interface_is_a_config_error(
    make_detector: Callable[..., Detector], tmp_path: Path
) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other", [x], [y])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(path))
    with pytest.raises(ConfigError, match="match neither"):
        make_detector(path)


def test_inference_fps_is_zero_before_any_run(tiny_model: Path, tmp_path: Path) -> None:
    assert Detector(DetectorConfig(model=str(tiny_model)), tmp_path).inference_fps == 0.0


def test_warm_up_runs_once_one_image_on_the_cpu_the_largest_batch_on_a_gpu(
    tiny_model: Path, make_detector: Callable[..., Detector], monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = make_detector(tiny_model, batch_size=3)
    real_run = detector_module._run_session
    batches: list[int] = []

    def spy(session: Any, outputs: list[str], feeds: dict[str, np.ndarray]) -> Any:
        batches.append(len(next(iter(feeds.values()))))
        return real_run(session, outputs, feeds)

    monkeypatch.setattr(detector_module, "_run_session", spy)
    detector.warm_up()
    # A GPU provider builds its engine for the largest batch; the CPU needs no more than one.
    assert batches == ([1] if detector.provider == CPU_PROVIDER else [3])
    assert detector.max_batch == 3
    assert detector.inference_fps == 0.0  # model time of real images only


def test_warm_up_before_load_is_a_programming_error(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="before load"):
        Detector(DetectorConfig(model=str(tiny_model)), tmp_path).warm_up()


# --- TensorRT options and the provider choice (pure: no GPU needed) ---------------------------

ALL_PROVIDERS = [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]


def test_tensorrt_gets_fp16_a_cache_and_a_profile_for_batches_one_to_batch_size(
    tmp_path: Path,
) -> None:
    model = write_tiny_detector(tmp_path / "tiny.onnx", "rtdetr")
    inputs = detector_module._model_inputs(model)  # read from the file, not hard-coded
    assert [name for name, _ in inputs] == ["images", "orig_target_sizes"]
    engines = tmp_path / "engines" / "tiny-abc"
    chain = provider_chain(ALL_PROVIDERS, tmp_path / "engines", engines, inputs, 4)
    assert [name for name, _ in chain] == ALL_PROVIDERS
    options = chain[0][1]
    assert options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(engines)
    assert options["trt_timing_cache_path"] == str(tmp_path / "engines")
    assert options["trt_profile_min_shapes"] == "images:1x3x640x640,orig_target_sizes:1x2"
    assert options["trt_profile_opt_shapes"] == "images:4x3x640x640,orig_target_sizes:4x2"
    assert options["trt_profile_max_shapes"] == "images:4x3x640x640,orig_target_sizes:4x2"
    assert chain[1:] == [(CUDA_PROVIDER, {}), (CPU_PROVIDER, {})]


def test_hugging_face_export_gets_its_own_input_in_the_profile(tmp_path: Path) -> None:
    inputs = detector_module._model_inputs(write_tiny_detector(tmp_path / "hf.onnx", "hf"))
    assert tensorrt_profile(inputs, 2) == {
        "trt_profile_min_shapes": "pixel_values:1x3x640x640",
        "trt_profile_opt_shapes": "pixel_values:2x3x640x640",
        "trt_profile_max_shapes": "pixel_values:2x3x640x640",
    }


def test_dynamic_image_sides_are_the_input_size_and_unknown_axes_leave_no_profile() -> None:
    assert tensorrt_profile([("images", ["N", 3, "H", "W"]), ("orig_target_sizes", [None, 2])],
                            8)["trt_profile_max_shapes"] == (
        "images:8x3x640x640,orig_target_sizes:8x2")
    assert tensorrt_profile([("tokens", ["N", "T"])], 4) == {}  # T: nothing says how long
    assert tensorrt_profile([("images", [2, 3, 640, 640])], 4) == {}  # static: none needed


def test_only_the_cpu_provider_is_offered_without_gpu_providers_or_a_gpu() -> None:
    assert usable_providers([CPU_PROVIDER], ["NVIDIA H100"], True) == (
        [CPU_PROVIDER], "onnxruntime has no CUDA/TensorRT provider")
    assert usable_providers(ALL_PROVIDERS, [], True) == (
        [CPU_PROVIDER], "no NVIDIA GPU visible")
    assert provider_chain([CPU_PROVIDER], Path("e"), Path("e/x"), [], 4) == [(CPU_PROVIDER, {})]


def test_tensorrt_is_offered_only_when_its_library_loads() -> None:
    assert usable_providers(ALL_PROVIDERS, ["NVIDIA L4"], True) == (
        ALL_PROVIDERS, "TensorRT with NVIDIA L4")
    assert usable_providers(ALL_PROVIDERS, ["NVIDIA L4"], False) == (
        [CUDA_PROVIDER, CPU_PROVIDER], "TensorRT's library (libnvinfer) is not installed")
    assert usable_providers([CUDA_PROVIDER, CPU_PROVIDER], ["NVIDIA L4"], False) == (
        [CUDA_PROVIDER, CPU_PROVIDER], "onnxruntime has no TensorRT provider")


def test_engine_folder_follows_the_model_contents_and_the_batch_size(tmp_path: Path) -> None:
    rtdetr = write_tiny_detector(tmp_path / "a" / "tiny.onnx", "rtdetr")
    hf = write_tiny_detector(tmp_path / "b" / "tiny.onnx", "hf")  # same name, new contents
    root = tmp_path / "engines"
    assert engine_dir(root, rtdetr, 4) == engine_dir(root, rtdetr, 4)
    assert engine_dir(root, rtdetr, 4).parent == root
    assert engine_dir(root, rtdetr, 4).name.startswith("tiny-")
    assert len({engine_dir(root, rtdetr, 4), engine_dir(root, hf, 4),
                engine_dir(root, rtdetr, 8)}) == 3


def test_load_asks_tensorrt_with_the_models_profile_then_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a GPU machine whose GPU providers fail: the chain load() builds is recorded."""
    model = write_tiny_detector(tmp_path / "tiny.onnx", "rtdetr")
    real_session = onnxruntime.InferenceSession
    tried: list[list[tuple[str, dict[str, Any]]]] = []

    def session(path: str, sess_options: Any, providers: list[Any]) -> Any:
        tried.append(providers)
        if providers[0][0] != CPU_PROVIDER:
            raise RuntimeError(f"{providers[0][0]} cannot start here")
        return real_session(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(detector_module, "gpu_names", lambda: ["NVIDIA Test GPU"])
    monkeypatch.setattr(detector_module, "tensorrt_loadable", lambda: True)
    monkeypatch.setattr(detector_module.ort, "get_available_providers", lambda: ALL_PROVIDERS)
    monkeypatch.setattr(detector_module.ort, "InferenceSession", session)
    detector = Detector(DetectorConfig(model=str(model), batch_size=2), tmp_path / "engines")
    with capture_logs() as logs:
        detector.load()
    assert [chain[0][0] for chain in tried] == ALL_PROVIDERS
    trt = dict(tried[0])[TENSORRT_PROVIDER]
    assert trt["trt_profile_max_shapes"] == "images:2x3x640x640,orig_target_sizes:2x2"
    assert Path(trt["trt_engine_cache_path"]) == engine_dir(tmp_path / "engines", model, 2)
    assert Path(trt["trt_engine_cache_path"]).is_dir()
    assert [e["provider"] for e in logs if e["event"] == "detector_provider_failed"] == [
        TENSORRT_PROVIDER, CUDA_PROVIDER]
    assert detector.provider == CPU_PROVIDER


@pytest.mark.skipif(not detector_module.gpu_names(), reason="needs an NVIDIA GPU")
def test_warm_up_on_the_gpu_builds_the_engine_before_the_first_snapshot(
    tmp_path: Path,
) -> None:
    model = write_tiny_detector(tmp_path / "tiny.onnx", "rtdetr")
    detector = Detector(DetectorConfig(model=str(model), batch_size=2), tmp_path / "engines")
    detector.load()
    detector.warm_up()
    assert detector.provider != CPU_PROVIDER
    if detector.provider == TENSORRT_PROVIDER:
        assert any((engine_dir(tmp_path / "engines", model, 2)).glob("*.engine"))
