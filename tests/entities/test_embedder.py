"""Appearance embedder: the model interface, batching, colours, and a real embedder on real
CCTV frames telling the same pedestrian from different ones."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from hsid.core.config import IMAGENET_MEAN, IMAGENET_STD, Config
from hsid.core.errors import ConfigError
from hsid.entities.embedder import Embedder, dominant_colours
from hsid.model_files.tiny_embedder import DIMENSIONS, expected_embedding, write_tiny_embedder
from hsid.pipeline.detector import DecodedImage, Detector, ObjectDetection, decode
from hsid.pipeline.recognizer import EMBED_MARGIN
from hsid.pipeline.thumbnails import crop

REAL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "real"
REAL_EMBEDDER = REAL_DIR / "models" / "mobilenetv2_bottle_embed.onnx"
REAL_DETECTOR = REAL_DIR / "models" / "yolov8n_rtdetr_iface.onnx"
FRAMES = sorted((REAL_DIR / "frames").glob("campus_*.jpg"))


def solid(bgr: tuple[int, int, int], height: int = 120, width: int = 50) -> np.ndarray:
    return np.full((height, width, 3), bgr, np.uint8)


def loaded(path: Path) -> Embedder:
    embedder = Embedder(str(path), IMAGENET_MEAN, IMAGENET_STD, threads=1)
    embedder.load()
    return embedder


def test_the_tiny_embedder_is_deterministic(tmp_path: Path) -> None:
    first = write_tiny_embedder(tmp_path / "a.onnx").read_bytes()
    assert write_tiny_embedder(tmp_path / "b.onnx").read_bytes() == first


def test_identical_crops_embed_identically_and_colours_differ(tmp_path: Path) -> None:
    embedder = loaded(write_tiny_embedder(tmp_path / "tiny.onnx"))
    red, blue = solid((0, 0, 255)), solid((255, 0, 0))
    vectors = embedder.embed([red, blue, red.copy(), solid((0, 0, 255), 300, 90)])
    assert vectors.shape == (4, DIMENSIONS)
    assert np.array_equal(vectors[0], vectors[2])
    assert vectors[0] @ vectors[3] == pytest.approx(1.0, abs=1e-6)  # size does not matter
    assert vectors[0] @ vectors[1] < 0  # red and blue point apart
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(4))
    assert vectors[0] == pytest.approx(expected_embedding((1.0, 0.0, 0.0), IMAGENET_MEAN,
                                                          IMAGENET_STD), abs=1e-5)
    assert embedder.input_size == (32, 32) and embedder.seconds_per_crop > 0


def test_a_fixed_batch_export_is_padded_and_gives_the_same_embeddings(tmp_path: Path) -> None:
    dynamic = loaded(write_tiny_embedder(tmp_path / "dynamic.onnx"))
    fixed = loaded(write_tiny_embedder(tmp_path / "fixed.onnx", batch=4,
                                       input_name="input", output_name="output"))
    crops = [solid((0, 0, 255)), solid((0, 255, 0)), solid((40, 40, 40)), solid((255, 0, 0)),
             solid((0, 200, 255)), solid((200, 0, 200))]  # six: one full batch, one padded
    assert fixed.embed(crops) == pytest.approx(dynamic.embed(crops), abs=1e-6)


def test_a_model_with_several_outputs_gives_its_first_of_rank_two(tmp_path: Path) -> None:
    """As CLIP vision exports do: last_hidden_state [N,50,768] and image_embeds [N,512]."""
    path = write_tiny_embedder(tmp_path / "clip-like.onnx")
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("Identity", ["cells"], ["last_hidden_state"]))
    model.graph.output.insert(0, helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["N", 3, 4, 4]))
    onnx.save(model, str(path))
    vectors = loaded(path).embed([solid((0, 0, 255))])
    assert vectors.shape == (1, DIMENSIONS)


@pytest.mark.parametrize(("shape", "message"), [
    (["N", 3, "H", "W"], "must fix its input's height and width"),
    (["N", 1, 32, 32], r"must take one input \[N,3,H,W\]"),
])
def test_a_model_that_is_no_image_embedder_is_refused_naming_why(
    tmp_path: Path, shape: list[object], message: str,
) -> None:
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["y"], axis=1)], "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"])])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    with pytest.raises(ConfigError, match=message):
        loaded(path)
    with pytest.raises(ConfigError, match="is not a file"):
        loaded(tmp_path / "missing.onnx")


@pytest.mark.parametrize(("bgr", "name"), [
    ((0, 0, 255), "red"), ((255, 0, 0), "blue"), ((0, 200, 0), "green"), ((0, 230, 255), "yellow"),
    ((20, 20, 20), "black"), ((240, 240, 240), "white"), ((128, 128, 128), "grey"),
    ((30, 70, 120), "brown"),
])
def test_dominant_colours_are_named(bgr: tuple[int, int, int], name: str) -> None:
    assert dominant_colours(solid(bgr)) == (name,)


def test_a_crop_of_two_colours_names_both_largest_first() -> None:
    jacket = solid((0, 0, 255))
    jacket[80:] = (255, 0, 0)  # a third blue: trousers
    assert dominant_colours(jacket) == ("red", "blue")


# --- real input ---------------------------------------------------------------------------


def _iou(a: ObjectDetection, b: ObjectDetection) -> float:
    ax1, ay1, bx1, by1 = a.bbox_x, a.bbox_y, b.bbox_x, b.bbox_y
    ax2, ay2 = ax1 + a.bbox_width, ay1 + a.bbox_height
    bx2, by2 = bx1 + b.bbox_width, by1 + b.bbox_height
    inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
    return inter / (a.bbox_width * a.bbox_height + b.bbox_width * b.bbox_height - inter)


def _pairs(before: list[ObjectDetection], after: list[ObjectDetection]
           ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Same pedestrian: each other's best overlap, IoU >= 0.3 (2 s apart, a few steps on).
    Different pedestrians: boxes that do not overlap at all."""
    same, different = [], []
    for i, a in enumerate(before):
        overlaps = [_iou(a, b) for b in after]
        j = int(np.argmax(overlaps))
        back = int(np.argmax([_iou(other, after[j]) for other in before]))
        if overlaps[j] >= 0.3 and back == i:
            same.append((i, j))
        different += [(i, k) for k, overlap in enumerate(overlaps) if overlap == 0]
    return same, different


@pytest.mark.skipif(not REAL_EMBEDDER.is_file() or not REAL_DETECTOR.is_file() or not FRAMES,
                    reason=f"real models and frames are absent from {REAL_DIR} "
                           "(see its README); the tiny embedder covers the mechanics")
def test_a_real_embedder_matches_the_same_pedestrian_more_often_than_different_ones(
    tmp_path: Path,
) -> None:
    """The campus frames are 2 s apart: pedestrians found by hsid's Detector (the real
    COCO model) are paired across consecutive frames by box overlap, cropped as the
    recognizer crops them and embedded with the real (generic, MobileNetV2) embedder."""
    config = Config().with_overrides({"detector": {"model": str(REAL_DETECTOR),
                                                   "classes": ["person"], "threads": 2}})
    detector = Detector(config.detector, tmp_path / "engines")
    detector.load()
    embedder = Embedder(str(REAL_EMBEDDER), config.entities.mean, config.entities.std, 2)
    embedder.load()
    frames: list[tuple[DecodedImage, list[ObjectDetection], np.ndarray]] = []
    for path in FRAMES:
        image = decode(path.read_bytes(), config.detector.max_pixels)
        people = detector.infer([image])[0]
        vectors = embedder.embed([crop(image, p, EMBED_MARGIN) for p in people])
        frames.append((image, people, vectors))
    same, different = [], []
    for (_, before, v0), (_, after, v1) in itertools.pairwise(frames):
        if before and after:
            pairs_same, pairs_different = _pairs(before, after)
            same += [float(v0[i] @ v1[j]) for i, j in pairs_same]
            different += [float(v0[i] @ v1[j]) for i, j in pairs_different]
    threshold = config.entities.threshold
    same_rate = float(np.mean(np.array(same) >= threshold))
    different_rate = float(np.mean(np.array(different) >= threshold))
    print(f"\nreal embedder on {len(FRAMES)} frames, threshold {threshold}: "
          f"same pedestrian {len(same)} pairs, similarity median {np.median(same):.3f} "
          f"(p10 {np.percentile(same, 10):.3f}), {same_rate:.0%} matched; different "
          f"pedestrians {len(different)} pairs, median {np.median(different):.3f} "
          f"(p90 {np.percentile(different, 90):.3f}), {different_rate:.0%} matched")
    assert len(same) >= 15 and len(different) >= 50
    assert same_rate > different_rate
    assert same_rate >= 0.5 and different_rate <= 0.3
    assert np.median(same) > np.median(different)
