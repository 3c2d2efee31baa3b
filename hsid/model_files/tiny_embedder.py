"""A tiny ONNX image embedder whose embedding is a fixed function of a crop's colours.

Tests and demos of re-identification (entities/matcher.py) need an embedder that answers
in microseconds, gives identical crops identical embeddings and tells colours apart, so
this graph is a colour layout, not a learned model. For each crop (already resized to
SIZE x SIZE, RGB 0..1, normalised with the configured mean and std) it averages each
channel over each cell of a GRID x GRID grid and returns those averages, channel by
channel, row by row: a GRID * GRID * 3 = 48-dimensional embedding. A solid red crop and a
solid blue one point in clearly different directions (cosine about -0.4 with ImageNet's
mean and std), while two JPEG copies of one red patch stay within 0.01 of cosine 1.

The interface is the one hsid's embedder reads: input `images` f32 [N,3,SIZE,SIZE],
output `embeddings` f32 [N,48]; the batch is dynamic unless `batch` fixes it (exports with
a fixed batch exist, and the embedder pads them). Standard opset-17 ops only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8  # the IR that goes with opset 17, so older onnxruntime builds load it too
SIZE = 32
GRID = 4
DIMENSIONS = GRID * GRID * 3


def write_tiny_embedder(path: Path, *, batch: int | None = None, input_name: str = "images",
                        output_name: str = "embeddings") -> Path:
    """Write the tiny colour embedder (see the module docstring) to `path`; returns `path`.

    Deterministic: the same arguments always give the same bytes. `batch` fixes the batch
    dimension (None: dynamic, "N").
    """
    cell = SIZE // GRID
    batch_dim: int | str = batch if batch is not None else "N"
    nodes = [
        helper.make_node("AveragePool", [input_name], ["cells"], kernel_shape=[cell, cell],
                         strides=[cell, cell]),  # [N,3,GRID,GRID]
        helper.make_node("Flatten", ["cells"], [output_name], axis=1),  # [N,48]
    ]
    graph = helper.make_graph(
        nodes, "tiny_embedder",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                       [batch_dim, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                       [batch_dim, DIMENSIONS])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="hsid-tiny-embedder", ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def expected_embedding(rgb: tuple[float, float, float], mean: tuple[float, ...],
                       std: tuple[float, ...]) -> np.ndarray:
    """The (L2-normalised) embedding hsid's embedder yields for a crop of one solid colour
    (`rgb` in 0..1): what a test can compare stored vectors with."""
    normalised = (np.asarray(rgb, np.float32) - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32)
    vector = np.repeat(normalised, GRID * GRID)
    return vector / np.linalg.norm(vector)
