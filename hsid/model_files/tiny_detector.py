"""A tiny ONNX detector with the RT-DETRv2 interface whose output is a fixed function of colour.

Tests and demos need a detector that answers in milliseconds and whose answer can be
predicted from the image, so this graph looks only for three solid colours. For each
image (RGB, 0..1, after the plain 640x640 resize) a pixel belongs to a colour when:

    red:   R > 0.8, G < 0.2, B < 0.2  ->  label 0  "person"  score 0.95
    green: G > 0.8, R < 0.2, B < 0.2  ->  label 16 "dog"     score 0.80
    blue:  B > 0.8, R < 0.2, G < 0.2  ->  label 2  "car"     score 0.60

Each colour has one slot (K = 3, in the order red, green, blue). When any pixel matches,
the slot holds that label and score, and its box is the bounding box of all matching
pixels in the 640x640 image (right/bottom edges exclusive) scaled back to the original
size by `orig_target_sizes / 640`. When no pixel matches, the slot's score and box are 0,
below any threshold. So a plain grey image yields nothing, and a solid red patch drawn on
a photo yields one person at 0.95 with the patch's box (to within the resize's rounding).

`interface="rtdetr"` writes the official RT-DETRv2 export: inputs `images` f32
[N,3,640,640] and `orig_target_sizes` i64 [N,2] (width, height); outputs `labels` i64
[N,3], `boxes` f32 [N,3,4] (xyxy, original pixels) and `scores` f32 [N,3].
`interface="hf"` writes the Hugging Face export: input `pixel_values` f32 [N,3,640,640];
outputs `logits` f32 [N,300,80] (pre-sigmoid: logit(score) at the slot's label, -100
everywhere else and in queries 3..299) and `pred_boxes` f32 [N,300,4] (cx, cy, w, h
normalised to 0..1; zeros when empty). Standard opset-17 ops only, dynamic batch N.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR that goes with opset 17, so older onnxruntime builds load it too
SIZE = 640
HF_QUERIES = 300
NUM_CLASSES = 80
HIGH, LOW = 0.8, 0.2  # a channel counts as "on" above HIGH and "off" below LOW
EMPTY_LOGIT = -100.0
NOT_FOUND = 1e4  # larger than any pixel index: min() over matching pixels ignores the others

# One slot per colour, in channel order (R, G, B): (COCO label, score).
COLOUR_SLOTS: tuple[tuple[int, float], ...] = ((0, 0.95), (16, 0.80), (2, 0.60))
INTERFACES = ("rtdetr", "hf")


class _GraphBuilder:
    """Collects nodes and constants so each op is one line, with generated tensor names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, value: np.ndarray | np.generic) -> str:
        self._count += 1
        name = f"c{self._count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        self._count += 1
        name = out or f"t{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name


def write_tiny_detector(path: Path, interface: str = "rtdetr") -> Path:
    """Write the tiny colour detector (see the module docstring) to `path`; returns `path`.

    Deterministic: the same interface always gives the same bytes. Raises ValueError for an
    interface other than "rtdetr" or "hf".
    """
    if interface not in INTERFACES:
        raise ValueError(f"interface must be one of {INTERFACES}, not {interface!r}")
    g = _GraphBuilder()
    image_input = "images" if interface == "rtdetr" else "pixel_values"
    x0, y0, x1, y1, present = _colour_extents(g, image_input)
    batch = helper.make_tensor_value_info(image_input, TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    if interface == "rtdetr":
        sizes = helper.make_tensor_value_info("orig_target_sizes", TensorProto.INT64, ["N", 2])
        inputs = [batch, sizes]
        outputs = _rtdetr_outputs(g, (x0, y0, x1, y1), present)
    else:
        inputs = [batch]
        outputs = _hf_outputs(g, (x0, y0, x1, y1), present)
    graph = helper.make_graph(g.nodes, f"tiny_detector_{interface}", inputs, outputs,
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="hsid-tiny-detector", ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _colour_extents(g: _GraphBuilder, image: str) -> tuple[str, str, str, str, str]:
    """Per colour slot: x0, y0, x1, y1 in 640-space (each [N,3]) and present (1.0 or 0.0)."""
    high = g.op("Cast", g.op("Greater", image, g.const(np.float32(HIGH))), to=TensorProto.FLOAT)
    low = g.op("Cast", g.op("Less", image, g.const(np.float32(LOW))), to=TensorProto.FLOAT)
    # want[1, slot, channel, 1, 1]: the slot's own channel must be high, the other two low.
    want = g.const(np.eye(3, dtype=bool).reshape(1, 3, 3, 1, 1))
    unsqueeze = g.const(_axes(1))
    matches = g.op("Where", want, g.op("Unsqueeze", high, unsqueeze),
                   g.op("Unsqueeze", low, unsqueeze))
    mask = g.op("ReduceMin", matches, axes=[2], keepdims=0)  # [N,3,H,W]: AND over channels
    columns = g.op("ReduceMax", mask, axes=[2], keepdims=0)  # [N,3,W]: any match in column
    rows = g.op("ReduceMax", mask, axes=[3], keepdims=0)  # [N,3,H]: any match in row
    present = g.op("ReduceMax", columns, axes=[2], keepdims=0)  # [N,3]
    x0, x1 = _span(g, columns)
    y0, y1 = _span(g, rows)
    return x0, y0, x1, y1, present


def _span(g: _GraphBuilder, hits: str) -> tuple[str, str]:
    """First matching index and one past the last, along the last axis of a 0/1 tensor."""
    index = g.const(np.arange(SIZE, dtype=np.float32))
    misses = g.op("Sub", g.const(np.float32(1.0)), hits)
    penalised = g.op("Add", index, g.op("Mul", misses, g.const(np.float32(NOT_FOUND))))
    first = g.op("ReduceMin", penalised, axes=[2], keepdims=0)
    end = g.op("Mul", hits, g.const(np.arange(1, SIZE + 1, dtype=np.float32)))
    return first, g.op("ReduceMax", end, axes=[2], keepdims=0)


def _stack_last(g: _GraphBuilder, parts: list[str], out: str | None = None) -> str:
    unsqueezed = [g.op("Unsqueeze", p, g.const(_axes(-1))) for p in parts]
    return g.op("Concat", *unsqueezed, axis=-1, out=out)


def _rtdetr_outputs(
    g: _GraphBuilder, corners: tuple[str, str, str, str], present: str
) -> list[onnx.ValueInfoProto]:
    box640 = _stack_last(g, list(corners))  # [N,3,4]
    sizes = g.op("Div", g.op("Cast", "orig_target_sizes", to=TensorProto.FLOAT),
                 g.const(np.float32(SIZE)))
    scale = g.op("Unsqueeze", g.op("Concat", sizes, sizes, axis=1), g.const(_axes(1)))
    gate = g.op("Unsqueeze", present, g.const(_axes(-1)))
    g.op("Mul", g.op("Mul", box640, scale), gate, out="boxes")
    scores = np.array([score for _, score in COLOUR_SLOTS], dtype=np.float32)
    g.op("Mul", present, g.const(scores), out="scores")
    labels = np.array([[label for label, _ in COLOUR_SLOTS]], dtype=np.int64)
    g.op("Expand", g.const(labels), g.op("Shape", present), out="labels")
    return [
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 3]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 3, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3]),
    ]


def _hf_outputs(
    g: _GraphBuilder, corners: tuple[str, str, str, str], present: str
) -> list[onnx.ValueInfoProto]:
    x0, y0, x1, y1 = corners
    half, unit = g.const(np.float32(0.5 / SIZE)), g.const(np.float32(1.0 / SIZE))
    cx = g.op("Mul", g.op("Add", x0, x1), half)
    cy = g.op("Mul", g.op("Add", y0, y1), half)
    w = g.op("Mul", g.op("Sub", x1, x0), unit)
    h = g.op("Mul", g.op("Sub", y1, y0), unit)
    gate = g.op("Unsqueeze", present, g.const(_axes(-1)))
    boxes = g.op("Mul", _stack_last(g, [cx, cy, w, h]), gate)  # [N,3,4]
    pad = g.const(np.array([0, 0, 0, 0, HF_QUERIES - 3, 0], dtype=np.int64))
    g.op("Pad", boxes, pad, g.const(np.float32(0.0)), out="pred_boxes")
    # Per slot: logit(score) when present, EMPTY_LOGIT when not; placed at the slot's label.
    logit = np.array([np.log(s / (1 - s)) for _, s in COLOUR_SLOTS], dtype=np.float32)
    value = g.op("Add", g.op("Mul", present, g.const(logit - EMPTY_LOGIT)),
                 g.const(np.float32(EMPTY_LOGIT)))
    onehot = np.zeros((3, NUM_CLASSES), dtype=np.float32)
    onehot[np.arange(3), [label for label, _ in COLOUR_SLOTS]] = 1.0
    placed = g.op("Mul", g.op("Unsqueeze", value, g.const(_axes(-1))), g.const(onehot))
    logits = g.op("Add", placed, g.const((1.0 - onehot) * np.float32(EMPTY_LOGIT)))
    g.op("Pad", logits, pad, g.const(np.float32(EMPTY_LOGIT)), out="logits")
    return [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", HF_QUERIES, NUM_CLASSES]),
        helper.make_tensor_value_info("pred_boxes", TensorProto.FLOAT, ["N", HF_QUERIES, 4]),
    ]


def _axes(*axes: int) -> np.ndarray:
    return np.array(axes, dtype=np.int64)
