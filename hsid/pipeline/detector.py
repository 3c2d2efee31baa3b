"""Object detection: decoding snapshots and running the RT-DETRv2 ONNX model on them."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import structlog

from hsid.core.config import DetectorConfig
from hsid.core.errors import ConfigError, PermanentError, TransientError
from hsid.core.nvml import gpu_names
from hsid.pipeline.image_format import JPEG_EOI, JPEG_MIME, image_end, image_header

log = structlog.get_logger(__name__)

# --- The model's world ------------------------------------------------------------------------
INPUT_SIZE = 640  # RT-DETRv2 exports take a plain 640x640 resize, no letterbox
# The 80 COCO classes in the 0-based order RT-DETRv2 and its Hugging Face export use.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
OFFICIAL_INTERFACE = "rtdetr"  # images + orig_target_sizes -> labels, boxes, scores
HF_INTERFACE = "hf"  # pixel_values -> logits, pred_boxes
CONFIDENCE_DECIMALS = 4  # float32 noise (0.949999988) must not decide a 0.95 threshold

# --- Execution providers, best first -----------------------------------------------------------
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS = frozenset({TENSORRT_PROVIDER, CUDA_PROVIDER})
FPS_WINDOW = 32  # inference runs the rolling images-per-second figure averages over
# TensorRT's own library, which onnxruntime-gpu lists its provider without; newest first.
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")
ModelInputs = Sequence[tuple[str, Sequence[int | str | None]]]  # (name, shape) per input

# --- Decoding ----------------------------------------------------------------------------------
# Decode big JPEGs at 1/8, 1/4 or 1/2 scale in libjpeg itself: much faster and smaller, and the
# model only sees 640x640. The largest factor that keeps both sides >= 640 wins.
REDUCED_DECODE_FLAGS = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)
# Boxes refer to the pixel grid as stored, as the reference's bbox columns and the official
# export's pre-processing assume, so EXIF rotation is not applied.
DECODE_FLAGS = cv2.IMREAD_IGNORE_ORIENTATION


@dataclass(frozen=True, slots=True, eq=False)
class DecodedImage:
    """A snapshot ready for the model, plus what thumbnails need to crop from it.

    `pixels` is the decoded BGR image; after a reduced decode it is smaller than
    `width` x `height`, the original size, which boxes are always expressed in.
    """

    tensor: np.ndarray  # float32 [3, 640, 640], RGB, 0..1
    pixels: np.ndarray  # uint8 [h, w, 3], BGR
    width: int
    height: int
    mime: str
    truncated: bool = False  # the file ended before the image did (see decode)


@dataclass(frozen=True, slots=True)
class ObjectDetection:
    """One detected object; the box is in original pixels and lies inside the image."""

    object_type: str
    confidence: float
    bbox_x: int
    bbox_y: int
    bbox_width: int
    bbox_height: int


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode a JPEG or PNG snapshot and pre-process it for the model; thread-safe.

    The size is read from the file header and checked against `max_pixels` before any
    pixel is decoded, so a decompression bomb costs nothing. Bytes after the image's end
    (image_format.image_end) are cut off first. A file whose end is missing, an upload cut
    short, is decoded as far as it goes and marked `truncated`: libjpeg fills the rest with
    grey, and the upper part of a cut snapshot is still evidence. Raises PermanentError
    with the reason for empty data, other formats, undecodable files and absurd sizes.
    """
    mime, width, height = image_header(data)
    if width * height > max_pixels:
        raise PermanentError(
            f"image is {width}x{height} ({width * height} pixels), over the limit of {max_pixels}"
        )
    end = image_end(data)
    if end is not None:
        data = data[:end]
    elif mime == JPEG_MIME:
        data += JPEG_EOI  # OpenCV refuses a JPEG without its end; libjpeg greys the rest
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _decode_flags(width, height))
    except cv2.error as err:
        raise PermanentError(f"{mime} could not be decoded: {err}") from err
    if pixels is None:
        raise PermanentError(f"{mime} could not be decoded: corrupt or truncated data")
    # Linear resize to 640x640 on the 8-bit pixels, BGR -> RGB, then 0..1 and HWC -> CHW in
    # one numpy pass: the same tensor, bit for bit, as cv2.dnn.blobFromImage, which took 4x
    # as long (0.9 against 3.8 ms for 768x576 on 2 cores: its parallel loops wake OpenCV's
    # threads, which matters when decode shares the cores with inference).
    rgb = cv2.cvtColor(cv2.resize(pixels, (INPUT_SIZE, INPUT_SIZE)), cv2.COLOR_BGR2RGB)
    tensor = np.empty((3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    np.multiply(rgb.transpose(2, 0, 1), np.float32(1 / 255.0), out=tensor)
    return DecodedImage(tensor=tensor, pixels=pixels, width=width, height=height, mime=mime,
                        truncated=end is None)


def _decode_flags(width: int, height: int) -> int:
    for factor, flag in REDUCED_DECODE_FLAGS:
        if width // factor >= INPUT_SIZE and height // factor >= INPUT_SIZE:
            return flag | DECODE_FLAGS
    return cv2.IMREAD_COLOR | DECODE_FLAGS


class Detector:
    """The RT-DETRv2 model: one onnxruntime session on the best provider that works.

    `load()` and `infer()` block; callers run them in a thread. `infer()` is safe to call
    from several threads at once (onnxruntime sessions are).
    """

    def __init__(self, config: DetectorConfig, cache_dir: Path) -> None:
        self._config = config
        self._cache_dir = cache_dir  # TensorRT engine cache
        self._engines = cache_dir  # this model's engine folder in it (engine_dir), once loaded
        self._provider_reason = ""  # why the best usable provider is the one (usable_providers)
        self._chain: list[tuple[str, dict[str, Any]]] = []
        self._session: ort.InferenceSession | None = None
        self._interface = ""
        self._static_batch: int | None = None
        self._runs: deque[tuple[int, float]] = deque(maxlen=FPS_WINDOW)
        self._runs_lock = threading.Lock()

    @property
    def provider(self) -> str:
        """The execution provider in use ("" before `load()`); health reports it."""
        return self._session.get_providers()[0] if self._session else ""

    @property
    def providers(self) -> list[tuple[str, dict[str, Any]]]:
        """The provider chain, with options, that opened the session ([] before `load()`):
        another session on the same model opened with it runs the same way."""
        return list(self._chain)

    @property
    def interface(self) -> str:
        """Which export the file is: "rtdetr" (official) or "hf"; "" before `load()`."""
        return self._interface

    @property
    def inference_fps(self) -> float:
        """Images per second of model time over the last FPS_WINDOW runs; 0.0 before any."""
        with self._runs_lock:
            images = sum(count for count, _ in self._runs)
            seconds = sum(elapsed for _, elapsed in self._runs)
        return images / seconds if seconds > 0 else 0.0

    def load(self) -> None:
        """Open the model on TensorRT, CUDA or CPU, whichever first works; blocking.

        Raises ConfigError when the model file is missing or unusable, a configured class is
        not a COCO class, or `require_gpu` is set and only the CPU provider came up.
        """
        model = Path(self._config.model)
        if not self._config.model or not model.is_file():
            raise ConfigError(f"detector.model: {self._config.model!r} is not a file")
        unknown = sorted(set(self._config.classes) - set(COCO_CLASSES))
        if unknown:
            raise ConfigError(f"detector.classes: {unknown} are not COCO class names")
        session = self._open_session(model)
        provider = session.get_providers()[0]
        if provider == CPU_PROVIDER and self._config.require_gpu:
            raise ConfigError(_no_gpu_message())
        self._interface = _interface_of(session)
        self._static_batch = _static_batch(session)
        self._session = session
        engines = {"engine_cache": str(self._engines)} if provider == TENSORRT_PROVIDER else {}
        log.info("detector_loaded", model=str(model), provider=provider,
                 interface=self._interface, threads=_thread_count(self._config.threads),
                 **engines)
        if provider == CPU_PROVIDER and GPU_PROVIDERS & set(ort.get_available_providers()):
            log.warning("detector_gpu_unavailable", provider=provider,
                        reason=self._provider_reason if self._provider_reason.startswith("no ")
                        else "GPU providers are installed but none initialised")

    @property
    def max_batch(self) -> int:
        """The most images one inference takes: a fixed-batch export's size, else batch_size."""
        return self._static_batch or self._config.batch_size

    def warm_up(self) -> None:
        """One inference on blank images, uncounted; blocking. Raises ConfigError when the
        model cannot run at all, so that is a start-up error, not a crash on the first image.

        On a GPU it runs the largest batch: TensorRT builds (or loads) its engine and CUDA
        picks its kernels on the first run of each shape, which takes seconds to minutes,
        done here before READY rather than mid-stream. On the CPU one image is enough, and
        the largest batch would leave onnxruntime's arena holding about 100 MB (the real
        detector at batch 4) on an idle daemon.
        """
        if self._session is None:
            raise RuntimeError("Detector.warm_up() called before load()")
        batch = self.max_batch if self.provider in GPU_PROVIDERS else 1
        blank = np.zeros((3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
        pixels = np.zeros((1, 1, 3), dtype=np.uint8)
        images = [DecodedImage(blank, pixels, INPUT_SIZE, INPUT_SIZE, "image/png")] * batch
        try:
            self._infer_batch(self._session, images, count=False)
        except TransientError as err:
            raise ConfigError(f"detector.model: the warm-up inference failed: {err}") from err

    def _open_session(self, model: Path) -> ort.InferenceSession:
        """Try the provider chain, dropping the best provider each time creation fails."""
        _preload_pip_cuda()
        options = ort.SessionOptions()
        options.intra_op_num_threads = _thread_count(self._config.threads)
        options.inter_op_num_threads = 1
        # Idle intra-op threads sleep rather than spin: the detect worker decodes and stores
        # on the same cores while the model runs, and spinning threads burn that time
        # (measured on 2 cores, batch 4: 0.80x of bare onnxruntime, 0.73x spinning; alone,
        # the model runs 3 % slower at batch 4 and 8 % at batch 1 without spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # onnxruntime-gpu lists its GPU providers on any machine; trying them without a GPU
        # (or TensorRT without its library) only prints pages of C++ errors before falling
        # back, so ask NVML and the loader first.
        available, self._provider_reason = usable_providers(
            ort.get_available_providers(), gpu_names(), tensorrt_loadable())
        inputs: ModelInputs = []
        if TENSORRT_PROVIDER in available:
            self._engines = engine_dir(self._cache_dir, model, self._config.batch_size)
            self._engines.mkdir(parents=True, exist_ok=True)
            inputs = _model_inputs(model)
        chain = provider_chain(available, self._cache_dir, self._engines, inputs,
                               self._config.batch_size)
        while True:
            try:
                session = ort.InferenceSession(str(model), sess_options=options, providers=chain)
                self._chain = chain
                return session
            # onnxruntime's error classes derive straight from Exception.
            except Exception as err:
                if len(chain) == 1:
                    raise ConfigError(f"detector.model: {model} cannot be loaded: {err}") from err
                log.warning("detector_provider_failed", provider=chain[0][0], error=str(err))
                chain = chain[1:]

    def infer(self, images: list[DecodedImage]) -> list[list[ObjectDetection]]:
        """Detections per image, in order, filtered by confidence and class; blocking.

        Images are run in batches of at most `batch_size`. Raises TransientError when the
        runtime fails (out of GPU memory, say) so the job is retried.
        """
        if self._session is None:
            raise RuntimeError("Detector.infer() called before load()")
        limit = self.max_batch
        results: list[list[ObjectDetection]] = []
        for start in range(0, len(images), limit):
            results.extend(self._infer_batch(self._session, images[start : start + limit]))
        return results

    def _infer_batch(
        self, session: ort.InferenceSession, images: list[DecodedImage], count: bool = True
    ) -> list[list[ObjectDetection]]:
        tensors = [image.tensor for image in images]
        if self._static_batch:  # a fixed-batch export: pad with blank images, drop their output
            blank = np.zeros_like(tensors[0])
            tensors += [blank] * (self._static_batch - len(tensors))
        batch = np.stack(tensors)
        started = time.perf_counter()
        if self._interface == OFFICIAL_INTERFACE:
            raw = _run_official(session, batch, images)
        else:
            raw = _run_hf(session, batch, images)
        if count:
            with self._runs_lock:
                self._runs.append((len(images), time.perf_counter() - started))
        return [
            _filter(labels, boxes, scores, image, self._config)
            for image, (labels, boxes, scores) in zip(images, raw, strict=False)
        ]


RawOutput = tuple[np.ndarray, np.ndarray, np.ndarray]  # labels [K], xyxy boxes [K,4], scores [K]


def _run_official(
    session: ort.InferenceSession, batch: np.ndarray, images: list[DecodedImage]
) -> list[RawOutput]:
    sizes = [(image.width, image.height) for image in images]
    sizes += [(INPUT_SIZE, INPUT_SIZE)] * (len(batch) - len(images))
    feeds = {"images": batch, "orig_target_sizes": np.array(sizes, dtype=np.int64)}
    labels, boxes, scores = _run_session(session, ["labels", "boxes", "scores"], feeds)
    return list(zip(labels, boxes, scores, strict=True))


def _run_hf(
    session: ort.InferenceSession, batch: np.ndarray, images: list[DecodedImage]
) -> list[RawOutput]:
    """Sigmoid scores, the best class per query, normalised cxcywh to original-pixel xyxy."""
    logits, pred_boxes = _run_session(session, ["logits", "pred_boxes"], {"pixel_values": batch})
    probs = 0.5 * (1.0 + np.tanh(0.5 * logits[: len(images)]))  # sigmoid that cannot overflow
    raw: list[RawOutput] = []
    for image, prob, box in zip(images, probs, pred_boxes, strict=False):
        cx, cy, w, h = box.T * np.array([[image.width], [image.height]] * 2, dtype=np.float32)
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
        raw.append((prob.argmax(axis=-1), xyxy, prob.max(axis=-1)))
    return raw


def _run_session(
    session: ort.InferenceSession, outputs: list[str], feeds: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """Run the model, turning a runtime failure (out of GPU memory, say) into a retry."""
    try:
        return session.run(outputs, feeds)
    except Exception as err:  # onnxruntime's error classes derive straight from Exception
        provider = session.get_providers()[0]
        raise TransientError(f"inference failed on {provider}: {err}") from err


def _filter(
    labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, image: DecodedImage,
    config: DetectorConfig,
) -> list[ObjectDetection]:
    """Keep confident, allowed, non-empty boxes, clamped to the image; best first."""
    found: list[ObjectDetection] = []
    keep = scores >= config.confidence - 10**-CONFIDENCE_DECIMALS
    for label, box, score in zip(labels[keep].tolist(), boxes[keep].tolist(),
                                 scores[keep].tolist(), strict=True):
        confidence = round(score, CONFIDENCE_DECIMALS)
        if not 0 <= label < len(COCO_CLASSES) or confidence < config.confidence:
            continue
        name = COCO_CLASSES[label]
        if name not in config.classes:
            continue
        x0, x1 = (round(min(max(v, 0.0), image.width)) for v in (box[0], box[2]))
        y0, y1 = (round(min(max(v, 0.0), image.height)) for v in (box[1], box[3]))
        if x1 > x0 and y1 > y0:
            found.append(ObjectDetection(name, confidence, x0, y0, x1 - x0, y1 - y0))
    return sorted(found, key=lambda det: det.confidence, reverse=True)


def _interface_of(session: ort.InferenceSession) -> str:
    inputs = {node.name for node in session.get_inputs()}
    outputs = {node.name for node in session.get_outputs()}
    if {"images", "orig_target_sizes"} <= inputs and {"labels", "boxes", "scores"} <= outputs:
        return OFFICIAL_INTERFACE
    if "pixel_values" in inputs and {"logits", "pred_boxes"} <= outputs:
        return HF_INTERFACE
    raise ConfigError(
        f"detector.model: inputs {sorted(inputs)} and outputs {sorted(outputs)} match neither "
        "the RT-DETRv2 export (images, orig_target_sizes -> labels, boxes, scores) nor the "
        "Hugging Face one (pixel_values -> logits, pred_boxes)"
    )


def _static_batch(session: ort.InferenceSession) -> int | None:
    """The batch size a fixed-shape export insists on, or None when the batch is dynamic."""
    first = session.get_inputs()[0].shape[0]
    return first if isinstance(first, int) and first > 0 else None


def usable_providers(
    available: Sequence[str], gpus: Sequence[str], tensorrt: bool
) -> tuple[list[str], str]:
    """The providers worth trying, best first, and why the best of them is the one.

    `available` is onnxruntime's list, `gpus` the NVIDIA GPUs NVML sees, `tensorrt` whether
    TensorRT's library loads. onnxruntime-gpu lists its GPU providers whether or not a GPU
    (or TensorRT) is there, so those facts decide. Pure: `hsid check` and load() share it.
    """
    if not GPU_PROVIDERS & set(available):
        return [CPU_PROVIDER], "onnxruntime has no CUDA/TensorRT provider"
    if not gpus:
        return [CPU_PROVIDER], "no NVIDIA GPU visible"
    usable = [p for p in (TENSORRT_PROVIDER, CUDA_PROVIDER) if p in available]
    if TENSORRT_PROVIDER in usable and not tensorrt:
        usable.remove(TENSORRT_PROVIDER)
        reason = "TensorRT's library (libnvinfer) is not installed"
    elif TENSORRT_PROVIDER in usable:
        reason = f"TensorRT with {gpus[0]}"
    else:
        reason = "onnxruntime has no TensorRT provider"
    return [*usable, CPU_PROVIDER], reason if usable else "no GPU provider can run"


def tensorrt_loadable() -> bool:
    """Whether TensorRT's library loads, as onnxruntime's TensorRT provider needs it to.

    A pip install (the tensorrt wheels) keeps it in site-packages, where the loader does not
    look; importing tensorrt_libs loads it from there first.
    """
    if importlib.util.find_spec("tensorrt_libs") is not None:
        try:
            importlib.import_module("tensorrt_libs")
        except Exception as err:  # a broken wheel: then the system's library, if any
            log.debug("tensorrt_libs_unusable", error=str(err))
    for name in TENSORRT_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def tensorrt_profile(inputs: ModelInputs, batch_size: int) -> dict[str, str]:
    """trt_profile_{min,opt,max}_shapes covering batches 1..batch_size, optimised for the
    largest, for a model with the given (name, shape) inputs.

    The batch is the first axis; the spatial axes of an image input ([N, 3, H, W]) are
    INPUT_SIZE, the size decode() always makes. {} when no axis is dynamic (TensorRT needs
    no profile) or one is that neither rule explains (onnxruntime then makes its profile
    from the shapes it sees, as it did before explicit profiles).
    """
    low: list[str] = []
    high: list[str] = []
    dynamic = False
    for name, shape in inputs:
        smallest: list[int] = []
        largest: list[int] = []
        for axis, dim in enumerate(shape):
            if isinstance(dim, int) and dim > 0:
                sizes = (dim, dim)
            elif axis == 0:
                sizes = (1, batch_size)
            elif len(shape) == 4 and axis >= 2:
                sizes = (INPUT_SIZE, INPUT_SIZE)
            else:
                return {}
            dynamic = dynamic or not isinstance(dim, int) or dim <= 0
            smallest.append(sizes[0])
            largest.append(sizes[1])
        low.append(f"{name}:{'x'.join(map(str, smallest))}")
        high.append(f"{name}:{'x'.join(map(str, largest))}")
    if not dynamic:
        return {}
    return {"trt_profile_min_shapes": ",".join(low), "trt_profile_opt_shapes": ",".join(high),
            "trt_profile_max_shapes": ",".join(high)}


def provider_chain(
    available: Sequence[str], cache_dir: Path, engines: Path, inputs: ModelInputs,
    batch_size: int,
) -> list[tuple[str, dict[str, Any]]]:
    """onnxruntime's providers argument: TensorRT (fp16, its engine cached in `engines`, the
    timing cache shared in `cache_dir`, a profile for batches 1..batch_size), CUDA, CPU;
    those not `available` left out."""
    chain: list[tuple[str, dict[str, Any]]] = []
    if TENSORRT_PROVIDER in available:
        chain.append((TENSORRT_PROVIDER, {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
            **tensorrt_profile(inputs, batch_size),
        }))  # fmt: skip
    if CUDA_PROVIDER in available:
        chain.append((CUDA_PROVIDER, {}))
    return [*chain, (CPU_PROVIDER, {})]


def engine_cache_root(state_dir: Path) -> Path:
    """The folder under paths.state_dir that holds the TensorRT engines and timing cache."""
    return state_dir / "engines"


def engine_dir(cache_dir: Path, model: Path, batch_size: int) -> Path:
    """Where this model's TensorRT engine is kept: named after the model file's contents,
    the batch size and the onnxruntime version, so replacing the file (same name, new
    weights) or upgrading never reuses a stale engine."""
    digest = hashlib.sha256(f"{batch_size}:{ort.__version__}:".encode())
    with model.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return cache_dir / f"{model.stem}-{digest.hexdigest()[:12]}"


def _model_inputs(model: Path) -> list[tuple[str, list[int | str | None]]]:
    """The model's inputs as (name, shape), a dimension being its size, or its symbolic
    name (or None) when dynamic; read from the file, before any session exists. [] when
    the file is no ONNX model (the session then says why)."""
    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception:  # protobuf's DecodeError and friends: not ours to word
        return []
    weights = {init.name for init in graph.initializer}
    inputs = []
    for node in graph.input:
        if node.name in weights:
            continue
        dims = node.type.tensor_type.shape.dim
        inputs.append((node.name, [d.dim_value if d.HasField("dim_value")
                                   else (d.dim_param or None) for d in dims]))
    return inputs


def _preload_pip_cuda() -> None:
    """Load CUDA/cuDNN from pip's nvidia-* wheels (onnxruntime-gpu[cuda,cudnn]) when present.

    onnxruntime does not look in site-packages on its own; without this a GPU install whose
    CUDA came from pip would silently run on the CPU.
    """
    if importlib.util.find_spec("nvidia") is not None and hasattr(ort, "preload_dlls"):
        ort.preload_dlls(directory="")


def _thread_count(configured: int) -> int:
    """`detector.threads`, or half the cores when 0 so the LLM keeps the other half."""
    return configured or max(1, (os.cpu_count() or 1) // 2)


def _no_gpu_message() -> str:
    available = ", ".join(ort.get_available_providers())
    return (
        "detector.require_gpu is true but no GPU execution provider is active: onnxruntime "
        f"fell back to {CPU_PROVIDER} (installed providers: {available}). Install "
        "onnxruntime-gpu with its CUDA and cuDNN libraries "
        "(pip install 'onnxruntime-gpu[cuda,cudnn]'), optionally TensorRT, and check that "
        "nvidia-smi sees the GPU; or set detector.require_gpu = false"
    )
