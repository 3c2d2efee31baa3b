"""Annotation: a snapshot with its detections' boxes, class labels and confidences drawn.

Blocking (decode, draw, encode): callers run it in a thread. Boxes are in the original
image's pixels, as the detector stores them; the picture may be scaled down first, and the
boxes follow, so lines and labels keep the same weight at any width.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from hsid.core.errors import PermanentError
from hsid.pipeline.detector import decode

JPEG_QUALITY = 85  # as thumbnails: small files that still show a face or a plate
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Lines and labels are sized for the output width: 3 px and a 0.7 font at 1280 px, never
# thinner than 2 px (JPEG's halved colour resolution would wash a 1 px line out).
LINE_PER_PIXEL = 3 / 1280
FONT_PER_PIXEL = 0.7 / 1280
MIN_LINE, MIN_FONT = 2, 0.4

# One colour per class (BGR), distinct where classes meet most: people, vehicles, animals.
# Other classes get a colour of their own from their name, the same every time.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "person": (0, 0, 255),        # red
    "car": (255, 128, 0),         # blue
    "truck": (255, 0, 128),       # violet-blue
    "bus": (255, 255, 0),         # cyan
    "motorcycle": (255, 0, 255),  # magenta
    "bicycle": (128, 255, 0),     # spring green
    "dog": (0, 255, 0),           # green
    "cat": (0, 255, 255),         # yellow
    "bird": (0, 128, 255),        # orange
}


@dataclass(frozen=True, slots=True)
class Box:
    """One detection to draw, in the original image's pixels."""

    object_type: str
    confidence: float
    x: int
    y: int
    width: int
    height: int


def class_colour(object_type: str) -> tuple[int, int, int]:
    """The class's colour (BGR): fixed for the common classes, else from its name."""
    if object_type in CLASS_COLOURS:
        return CLASS_COLOURS[object_type]
    hue = hashlib.sha256(object_type.encode()).digest()[0] / 256
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return round(blue * 255), round(green * 255), round(red * 255)


def annotate(data: bytes, boxes: Sequence[Box], *, max_pixels: int,
             width: int | None = None) -> bytes:
    """JPEG bytes of the image in `data` with `boxes` drawn, `width` pixels wide (None: the
    original width; never wider than the original). Raises PermanentError when the image
    can't be decoded (see detector.decode)."""
    image = decode(data, max_pixels)
    out_width = min(width or image.width, image.width)
    out_height = max(1, round(image.height * out_width / image.width))
    pixels = image.pixels
    if pixels.shape[1] != out_width or pixels.shape[0] != out_height:
        shrink = out_width < pixels.shape[1]
        pixels = cv2.resize(pixels, (out_width, out_height),
                            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    else:
        pixels = pixels.copy()  # decode's pixels may be shared; drawing writes in place
    scale = out_width / image.width
    for box in sorted(boxes, key=lambda b: b.confidence):  # the surest drawn last, on top
        draw_box(pixels, box, scale)
    return encode_jpeg(pixels)


def draw_box(pixels: np.ndarray, box: Box, scale: float) -> None:
    """Draw one box and its label ("person 95%") on `pixels` (BGR, in place); the box is
    in original pixels, `scale` takes it to these."""
    rows, cols = pixels.shape[:2]
    line = max(MIN_LINE, round(cols * LINE_PER_PIXEL))
    font = max(MIN_FONT, cols * FONT_PER_PIXEL)
    colour = class_colour(box.object_type)
    left, top = round(box.x * scale), round(box.y * scale)
    right = round((box.x + box.width) * scale)
    bottom = round((box.y + box.height) * scale)
    left, right = sorted((min(max(left, 0), cols - 1), min(max(right, 0), cols - 1)))
    top, bottom = sorted((min(max(top, 0), rows - 1), min(max(bottom, 0), rows - 1)))
    cv2.rectangle(pixels, (left, top), (right, bottom), colour, line)
    label = f"{box.object_type} {box.confidence:.0%}"
    (text_w, text_h), base = cv2.getTextSize(label, FONT, font, max(1, line // 2))
    pad = max(1, line)
    # Above the box when there is room, else just inside its top edge.
    label_top = top - text_h - base - 2 * pad
    if label_top < 0:
        label_top = min(top + line, max(0, rows - text_h - base - 2 * pad))
    label_bottom = label_top + text_h + base + 2 * pad
    label_right = min(cols - 1, left + text_w + 2 * pad)
    cv2.rectangle(pixels, (left, label_top), (label_right, label_bottom), colour, cv2.FILLED)
    cv2.putText(pixels, label, (left + pad, label_bottom - base - pad), FONT, font,
                _ink(colour), max(1, line // 2), cv2.LINE_AA)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise PermanentError(f"a {pixels.shape[1]}x{pixels.shape[0]} picture could not be "
                             "encoded as JPEG")
    return encoded.tobytes()


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light label colours, white on dark ones."""
    blue, green, red = colour
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)


def sample_picture(width: int) -> bytes:
    """A made-up snapshot with one person drawn on it, for `hsid alerts test`: what a
    channel's picture looks like, with no camera behind it."""
    height = width * 9 // 16
    rows = np.linspace(90, 200, height, dtype=np.uint8)[:, None]
    pixels = np.repeat(np.repeat(rows, width, axis=1)[:, :, None], 3, axis=2)
    box = Box("person", 0.95, width * 2 // 5, height // 4, width // 8, height // 2)
    cv2.rectangle(pixels, (box.x, box.y), (box.x + box.width, box.y + box.height),
                  (70, 70, 70), cv2.FILLED)  # a figure to frame
    draw_box(pixels, box, 1.0)
    return encode_jpeg(pixels)
