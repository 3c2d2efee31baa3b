"""EXIF dates: when a JPEG or PNG says it was taken, read from its TIFF-structured metadata.

Only the few tags hsid needs (the Exif 2.32 / CIPA DC-008 numbering): DateTimeOriginal and
OffsetTimeOriginal and SubSecTimeOriginal in the Exif IFD, and IFD0's DateTime with
OffsetTime as a last resort (some firmwares write no DateTimeOriginal). A few dozen lines of
struct reading instead of a dependency: Pillow would be pulled in for this alone (decoding is
OpenCV's), and every read here is bounds-checked, so a malformed or hostile file yields
None, never an exception or a long loop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Tags (TIFF/Exif numbering)
TAG_DATE_TIME = 0x0132  # IFD0: "YYYY:MM:DD HH:MM:SS", when the file was last changed
TAG_EXIF_IFD = 0x8769  # IFD0: offset of the Exif IFD
TAG_DATE_TIME_ORIGINAL = 0x9003  # when the picture was taken
TAG_OFFSET_TIME = 0x9010  # "+01:00": the UTC offset of DateTime
TAG_OFFSET_TIME_ORIGINAL = 0x9011  # ... of DateTimeOriginal
TAG_SUBSEC_TIME_ORIGINAL = 0x9291  # "123": fractions of DateTimeOriginal's second

TYPE_ASCII, TYPE_LONG = 2, 4
MAX_IFD_ENTRIES = 512  # far more than any camera writes; a bigger count is garbage
JPEG_APP1, JPEG_SOS, JPEG_EOI = 0xE1, 0xDA, 0xD9
EXIF_HEADER = b"Exif\x00\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, slots=True)
class ExifDate:
    """The EXIF capture date as written: wall-clock text, and its offset when given."""

    date_time: str  # "YYYY:MM:DD HH:MM:SS"
    offset: str | None = None  # "+HH:MM" / "-HH:MM"
    subsec: str | None = None  # digits
    tag: str = "DateTimeOriginal"


def exif_date(data: bytes) -> ExifDate | None:
    """The capture date in a JPEG's APP1 Exif segment or a PNG's eXIf chunk; None when
    the image has none, or its metadata is unreadable."""
    tiff = _jpeg_tiff(data) if data[:2] == b"\xff\xd8" else (
        _png_tiff(data) if data[:8] == PNG_SIGNATURE else None)
    return None if tiff is None else _tiff_date(tiff)


def _jpeg_tiff(data: bytes) -> bytes | None:
    """The TIFF block of the first Exif APP1 segment, from the markers before the scan."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (JPEG_SOS, JPEG_EOI):
            return None  # the metadata segments all come before the image data
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            return None
        body = data[pos + 4 : pos + 2 + length]
        if marker == JPEG_APP1 and body.startswith(EXIF_HEADER):
            return body[len(EXIF_HEADER):]
        pos += 2 + length
    return None


def _png_tiff(data: bytes) -> bytes | None:
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf":
            return data[pos + 8 : pos + 8 + length]
        if kind == b"IEND":
            return None
        pos += 12 + length
    return None


def _tiff_date(tiff: bytes) -> ExifDate | None:
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        magic, ifd0 = struct.unpack_from(order + "HI", tiff, 2)
        if magic != 42:
            return None
        main = _ifd(tiff, order, ifd0)
        exif_at = main.get(TAG_EXIF_IFD)
        exif = _ifd(tiff, order, exif_at) if isinstance(exif_at, int) else {}
    except (KeyError, struct.error, ValueError):
        return None
    if isinstance(original := exif.get(TAG_DATE_TIME_ORIGINAL), str):
        return ExifDate(original, _text(exif.get(TAG_OFFSET_TIME_ORIGINAL)),
                        _text(exif.get(TAG_SUBSEC_TIME_ORIGINAL)))
    if isinstance(changed := main.get(TAG_DATE_TIME), str):
        return ExifDate(changed, _text(exif.get(TAG_OFFSET_TIME)), tag="DateTime")
    return None


WANTED = {TAG_DATE_TIME, TAG_EXIF_IFD, TAG_DATE_TIME_ORIGINAL, TAG_OFFSET_TIME,
          TAG_OFFSET_TIME_ORIGINAL, TAG_SUBSEC_TIME_ORIGINAL}


def _ifd(tiff: bytes, order: str, offset: int) -> dict[int, str | int]:
    """The wanted tags of the IFD at `offset`: ASCII ones as text, LONG ones as numbers."""
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    if count > MAX_IFD_ENTRIES:
        raise ValueError("implausible IFD entry count")
    values: dict[int, str | int] = {}
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag not in WANTED:
            continue
        if kind == TYPE_LONG and n == 1:
            values[tag] = struct.unpack_from(order + "I", tiff, entry + 8)[0]
        elif kind == TYPE_ASCII:
            start = entry + 8 if n <= 4 else struct.unpack_from(order + "I", tiff, entry + 8)[0]
            raw = tiff[start : start + n]
            if len(raw) == n:
                values[tag] = raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()
    return values


def _text(value: str | int | None) -> str | None:
    return value if isinstance(value, str) and value else None
