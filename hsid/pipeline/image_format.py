"""Image file formats: JPEG and PNG signatures, dimensions, and where a file's image ends.

Pure byte parsing, no pixels decoded, so the watcher can judge an upload without loading
the detector's libraries. Markers and chunk layouts are those of ITU-T T.81 (JPEG) and
ISO/IEC 15948 (PNG).
"""

from __future__ import annotations

from hsid.core.errors import PermanentError

JPEG_MIME = "image/jpeg"
PNG_MIME = "image/png"
JPEG_SOI = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk, always last
# Start-of-frame markers, which carry the dimensions: C0-CF except DHT (C4), JPG (C8), DAC (CC).
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers.
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
JPEG_SOS, JPEG_EOI_MARKER = 0xDA, 0xD9


def image_header(data: bytes) -> tuple[str, int, int]:
    """(MIME type, width, height) from a JPEG or PNG header, without decoding pixels.

    Raises PermanentError when the data is empty, not a JPEG or PNG, or its header is broken.
    """
    if not data:
        raise PermanentError("image is empty (0 bytes)")
    if data.startswith(JPEG_SOI):
        mime, (width, height) = JPEG_MIME, _jpeg_size(data)
    elif data.startswith(PNG_SIGNATURE):
        mime, (width, height) = PNG_MIME, _png_size(data)
    else:
        raise PermanentError("not a JPEG or PNG image (unrecognised leading bytes)")
    if width <= 0 or height <= 0:
        raise PermanentError(f"{mime} header declares an empty image ({width}x{height})")
    return mime, width, height


def image_end(data: bytes) -> int | None:
    """The offset just past the image's last byte, or None when its end is missing.

    A JPEG ends at the first end-of-image marker after its scans: the segments are walked
    by their lengths and each scan's entropy-coded data to its next marker, so an EXIF
    thumbnail's own EOI, or bytes that merely look like one, are never taken for it. A PNG
    ends after its IEND chunk. Cameras (ESP32 and OV-sensor ones especially) pad or append
    junk after the end: whatever follows it is not part of the image.
    """
    if data.startswith(PNG_SIGNATURE):
        found = data.find(PNG_IEND, len(PNG_SIGNATURE))
        return None if found < 0 else found + len(PNG_IEND)
    if not data.startswith(JPEG_SOI):
        return None
    pos, size = 2, len(data)
    while pos + 2 <= size:
        if data[pos] != 0xFF:
            return None  # not a marker where one must be: corrupt, never complete
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == JPEG_EOI_MARKER:
            return pos + 2
        elif marker in JPEG_STANDALONE_MARKERS:
            pos += 2
        elif pos + 4 > size:
            return None
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == JPEG_SOS:
                pos = _end_of_scan(data, pos)
    return None


def _end_of_scan(data: bytes, pos: int) -> int:
    """Where the entropy-coded data starting at `pos` ends: at the first marker that is not
    a stuffed 0xFF00, a restart marker or a fill byte (T.81 B.1.1.5); len(data) if none."""
    while (pos := data.find(b"\xff", pos)) >= 0 and pos + 1 < len(data):
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
        elif following == 0xFF:
            pos += 1
        else:
            return pos
    return len(data)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the marker segments up to the first start-of-frame and read its dimensions."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise PermanentError(f"JPEG header is corrupt: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker in JPEG_STANDALONE_MARKERS:
            pos += 2
        elif marker in JPEG_SOF_MARKERS and pos + 9 <= len(data):
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            return int.from_bytes(data[pos + 7 : pos + 9], "big"), height
        elif marker in (JPEG_EOI_MARKER, JPEG_SOS):  # and still no frame
            break
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise PermanentError("JPEG header has no frame (SOF) marker: truncated or corrupt")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise PermanentError("PNG header is truncated or has no IHDR chunk")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
