"""Appearance embeddings: detection crops run through an ONNX image embedder, and their colours.

The model interface (`[entities]` in the config): one input f32 [N,3,H,W], RGB scaled to
0..1 and then normalised per channel with the configured mean and std, H and W read from
the model; one output [N,D] (with several outputs, the first of rank 2, such as a CLIP
vision export's `image_embeds`). Names are taken from the model. Crops are plainly
resized to H x W, as re-identification models (OSNet: 256x128) are trained. Embeddings are
L2-normalised here, so cosine similarity is a dot product, whatever the model returns.

An export with a fixed batch (the public OSNet x0.25 file is fixed at 16) is fed full
batches padded with blank crops, whose rows are dropped: correct, but a lone crop costs a
whole batch; models/README.md shows how to make the batch dynamic once.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import structlog

from hsid.core.errors import ConfigError, TransientError
from hsid.core.nvml import gpu_names

log = structlog.get_logger(__name__)

MAX_BATCH = 32  # crops per run for a dynamic-batch model: bounds the memory of a busy scene
# A crop's colours are read from a copy at most this many pixels on its longest side.
COLOUR_SIDE = 48
# Share of a crop's pixels a colour needs to be named; at most MAX_COLOURS are.
COLOUR_SHARE = 0.15
MAX_COLOURS = 3
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class Embedder:
    """One image-embedding model: an onnxruntime session on CUDA or the CPU.

    `load()` and `embed()` block; callers run them in a thread. `embed()` may be called
    from several threads at once (onnxruntime sessions are thread-safe).
    """

    def __init__(self, model: str, mean: Sequence[float], std: Sequence[float],
                 threads: int = 0) -> None:
        self._model = model
        self._mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        self._threads = threads or max(1, (os.cpu_count() or 1) // 2)
        self._session: ort.InferenceSession | None = None
        self._input = self._output = ""
        self._size = (0, 0)  # (height, width)
        self._static_batch: int | None = None
        self._seconds = 0.0
        self._crops = 0
        self._stats_lock = threading.Lock()

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        """The execution provider in use ("" before `load()`)."""
        return self._session.get_providers()[0] if self._session else ""

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes; (0, 0) before `load()`."""
        return self._size

    @property
    def seconds_per_crop(self) -> float:
        """Mean model time per crop so far (0.0 before any), for health and benchmarks."""
        with self._stats_lock:
            return self._seconds / self._crops if self._crops else 0.0

    def load(self) -> None:
        """Open the model; blocking. Raises ConfigError when the file is missing or its
        interface is not an image embedder's (see the module docstring)."""
        path = Path(self._model)
        if not self._model or not path.is_file():
            raise ConfigError(f"entities: model {self._model!r} is not a file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        providers = ([CUDA_PROVIDER] if gpu_names() and CUDA_PROVIDER in
                     ort.get_available_providers() else []) + [CPU_PROVIDER]
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime's error classes derive straight from Exception
            raise ConfigError(f"entities: model {path} cannot be loaded: {err}") from err
        self._input, self._size, self._static_batch = _input_of(session, path)
        self._output = _output_of(session, path)
        self._session = session
        log.info("embedder_loaded", model=str(path), provider=self.provider,
                 input=f"{self._input} {self._size[0]}x{self._size[1]}", output=self._output,
                 static_batch=self._static_batch)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings [len(crops), D] of BGR uint8 crops, in order; blocking.

        Raises TransientError when the runtime fails (out of GPU memory, say).
        """
        if self._session is None:
            raise RuntimeError("Embedder.embed() called before load()")
        if not crops:
            return np.zeros((0, 0), np.float32)
        started = time.perf_counter()
        batch = self._static_batch or MAX_BATCH
        chunks = [crops[i : i + batch] for i in range(0, len(crops), batch)]
        vectors = np.concatenate([self._run(self._session, self._tensor(chunk), len(chunk))
                                  for chunk in chunks])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        with self._stats_lock:
            self._seconds += time.perf_counter() - started
            self._crops += len(crops)
        return vectors / np.maximum(norms, 1e-12)

    def _tensor(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        height, width = self._size
        blob = cv2.dnn.blobFromImages(list(crops), 1 / 255.0, (width, height), swapRB=True)
        blob = (blob - self._mean) / self._std
        if self._static_batch and len(blob) < self._static_batch:
            blank = np.zeros((self._static_batch - len(blob), *blob.shape[1:]), np.float32)
            blob = np.concatenate([blob, blank])
        return blob.astype(np.float32, copy=False)

    def _run(self, session: ort.InferenceSession, tensor: np.ndarray, count: int) -> np.ndarray:
        try:
            out = session.run([self._output], {self._input: tensor})[0]
        except Exception as err:  # onnxruntime's error classes derive straight from Exception
            raise TransientError(f"embedding failed on {self.provider}: {err}") from err
        out = np.asarray(out, np.float32)
        if out.ndim != 2 or len(out) < count:
            raise TransientError(f"embedder output has shape {out.shape}, not [{count},D]")
        return out[:count]


def _input_of(session: ort.InferenceSession,
              path: Path) -> tuple[str, tuple[int, int], int | None]:
    """The input's name, (height, width), and its fixed batch (None when dynamic)."""
    inputs = session.get_inputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3:
        raise ConfigError(f"entities: model {path} must take one input [N,3,H,W]; it takes "
                          + ", ".join(f"{i.name} {i.shape}" for i in inputs))
    height, width = shape[2], shape[3]
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ConfigError(f"entities: model {path} must fix its input's height and width, "
                          f"not {shape}")
    first = shape[0]
    return inputs[0].name, (height, width), first if isinstance(first, int) and first > 0 \
        else None


def _output_of(session: ort.InferenceSession, path: Path) -> str:
    outputs = session.get_outputs()
    if len(outputs) == 1:
        return outputs[0].name
    for output in outputs:
        if len(output.shape) == 2:
            return output.name
    raise ConfigError(f"entities: model {path} has no output [N,D]: "
                      + ", ".join(f"{o.name} {o.shape}" for o in outputs))


# --- Colours -----------------------------------------------------------------------------------

def dominant_colours(crop: np.ndarray) -> tuple[str, ...]:
    """The names of the colours covering at least COLOUR_SHARE of a BGR crop, most first (at
    most MAX_COLOURS): black, white, grey, red, orange, brown, yellow, green, blue, purple,
    pink. For the entity's description ("a person in red"), not for matching."""
    longest = max(crop.shape[:2])
    if longest > COLOUR_SIDE:
        factor = COLOUR_SIDE / longest
        size = (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2HSV).reshape(-1, 3)
    names = Counter(_colour_name(int(h), int(s), int(v)) for h, s, v in hsv)
    total = sum(names.values())
    return tuple(name for name, count in names.most_common(MAX_COLOURS)
                 if count / total >= COLOUR_SHARE)


def _colour_name(hue: int, saturation: int, value: int) -> str:
    """OpenCV's HSV (hue 0..179, saturation and value 0..255) to a plain colour word."""
    if value < 50:
        return "black"
    if saturation < 45:
        return "white" if value > 200 else "grey"
    if hue < 8 or hue >= 170:
        return "red"
    if hue < 22:
        return "orange" if value > 150 else "brown"
    if hue < 35:
        return "yellow"
    if hue < 85:
        return "green"
    if hue < 130:
        return "blue"
    return "purple" if hue < 150 else "pink"
