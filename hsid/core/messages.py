"""Every queue item, dead letter and pub/sub message, typed, with its one codec.

What crosses a process boundary (a Redis list or channel) is one of the frozen models
below. Each is encoded by its `encode()` (compact JSON, keys in the reference's order:
the model's field order is the reference's) and decoded in one place per kind:
`decode_item(queue, raw)` for the queues, `decode_dead_letter` for the DLQs and
`decode_message` for the channels. A queue item that is not what its queue carries raises
`MalformedItem`, which the queue's consumer turns into a dead letter with its reason
(queues.py), never a crash or a silent drop.

hsid's extensions of the reference's item shapes come after the reference's keys and are
left out while unset (None, or a crash_count of 0), so an item without them is exactly
the reference's shape. Decoding ignores keys it does not know (an item from a newer or
older hsid still decodes); building one in code with an unknown key is an error.

The Lua close script in pipeline/batcher.py builds the analysis item by hand, in
AnalysisItem's key order; tests/core/test_messages.py decodes its real output.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)

from hsid.core.constants import ANALYSIS_QUEUE, DETECTION_QUEUE
from hsid.core.errors import PermanentError

__all__ = [
    "AlertData", "AlertMessage", "AnalysisItem", "DeadLetter", "DetectedObject",
    "DetectionData", "DetectionItem", "DetectionMessage", "EventData", "EventMessage",
    "MalformedItem", "Message", "QueueItem", "SystemStatusData", "SystemStatusMessage",
    "decode_dead_letter", "decode_item", "decode_message", "item_from", "original_of",
    "reference_time",
]


def reference_time(moment: datetime) -> str:
    """The reference's timestamp form, UTC without offset (`2025-12-23T10:30:00.000000`);
    a naive datetime is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# A time in the reference's naive-UTC text form (queue items, dead letters); decoded as an
# aware UTC time.
ReferenceTime = Annotated[datetime, AfterValidator(_as_utc),
                          PlainSerializer(reference_time, return_type=str)]
# A time as its own isoformat() (pub/sub messages: the offset is kept).
IsoTime = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str)]
NonEmpty = Annotated[str, Field(min_length=1)]


class MalformedItem(PermanentError):
    """A queue item (or message) that is not what its queue carries; `reason` says why."""

    code = "malformed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed queue item: {reason}")
        self.reason = reason


class _Wire(BaseModel):
    """A frozen, strictly typed structure with one JSON encoding."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    # Fields left out of the encoding while they hold their default (hsid's extensions).
    OMIT_DEFAULT: ClassVar[frozenset[str]] = frozenset()

    def encode(self) -> str:
        """Compact JSON, keys in field order (the reference's), unset extensions left out."""
        data = self.model_dump(mode="json", fallback=str)
        for name in self.OMIT_DEFAULT:
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _reason(err: ValidationError) -> str:
    """A ValidationError as one line: `field: problem; field: problem`."""
    parts = []
    for error in err.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)


# --- Queue items -------------------------------------------------------------------------------


class DetectionItem(_Wire):
    """A detection_queue item: an image the watcher took, for the detect worker.

    Reference: camera_id, file_path, timestamp (when it was queued, naive UTC text).
    hsid's extensions: the upload as the watcher hashed it (snapshots.Upload: sha256, the
    path of the bytes to read, size and mtime when taken; all four or none), and
    crash_count (how many processes died with it in flight, see ReliableQueue.recover).
    """

    camera_id: NonEmpty
    file_path: NonEmpty
    # Set by every hsid producer; an item queued by hand may lack it (then: arrival now).
    timestamp: ReferenceTime | None = None
    sha256: str | None = None
    image_path: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    crash_count: int = Field(default=0, ge=0)

    OMIT_DEFAULT: ClassVar[frozenset[str]] = frozenset({
        "timestamp", "sha256", "image_path", "size", "mtime_ns", "crash_count"})



class AnalysisItem(_Wire):
    """An analysis_queue item: a closed batch (or an episode's fast-path image).

    Reference: batch_id, camera_id, detection_ids. hsid's extensions (batcher.py):
    episode_id (the episode the batch belongs to), fast_path (True: the episode's first,
    analysed at once; absent in an item from before episodes), crash_count.
    """

    batch_id: NonEmpty
    camera_id: NonEmpty
    detection_ids: Annotated[list[int], Field(min_length=1)]
    episode_id: NonEmpty | None = None
    fast_path: bool | None = None
    crash_count: int = Field(default=0, ge=0)

    OMIT_DEFAULT: ClassVar[frozenset[str]] = frozenset({
        "episode_id", "fast_path", "crash_count"})


QueueItem = DetectionItem | AnalysisItem
ITEM_TYPES: dict[str, type[DetectionItem] | type[AnalysisItem]] = {
    DETECTION_QUEUE: DetectionItem,
    ANALYSIS_QUEUE: AnalysisItem,
}


def decode_item(queue: str, raw: bytes | str) -> QueueItem:
    """The item `raw` (what the queue's Redis list holds) is, typed by its queue.

    Raises MalformedItem (with its reason) for anything else: not JSON, not an object, a
    missing or mistyped key. Unknown keys are ignored. KeyError for an unknown queue.
    """
    model = ITEM_TYPES[queue]
    try:
        return model.model_validate_json(raw, extra="ignore")
    except ValidationError as err:
        if any(error["type"] == "json_invalid" for error in err.errors()):
            raise MalformedItem(f"not JSON ({_reason(err)})") from None
        if any(error["type"] == "model_type" for error in err.errors()):
            kind = type(json.loads(raw)).__name__
            raise MalformedItem(f"not a JSON object but {kind}") from None
        raise MalformedItem(_reason(err)) from None


def item_from(queue: str, item: QueueItem | dict[str, Any]) -> QueueItem:
    """`item` as its queue's typed item: a typed one is checked for its queue, a dict is
    decoded as its JSON would be. Raises MalformedItem."""
    model = ITEM_TYPES[queue]
    if isinstance(item, model):
        return item
    if isinstance(item, BaseModel):
        raise MalformedItem(f"a {type(item).__name__} does not go on {queue}")
    return decode_item(queue, json.dumps(item))


# --- Dead letters ------------------------------------------------------------------------------


class DeadLetter(_Wire):
    """A dlq:<queue> entry (the reference's DLQ item schema). `original_job` is the item
    exactly as the queue held it: its JSON object, or its text when it was not one."""

    original_job: dict[str, Any] | str
    error: str
    attempt_count: int
    first_failed_at: ReferenceTime
    last_failed_at: ReferenceTime
    queue_name: str


def decode_dead_letter(raw: bytes | str) -> DeadLetter:
    """A DLQ entry, typed; MalformedItem when it is not one."""
    try:
        return DeadLetter.model_validate_json(raw, extra="ignore")
    except ValidationError as err:
        raise MalformedItem(_reason(err)) from None


def original_of(raw: bytes) -> dict[str, Any] | str:
    """What a dead letter keeps of a queue entry: its JSON object, else its text."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else raw.decode("utf-8", errors="replace")


# --- Pub/sub messages --------------------------------------------------------------------------


class DetectedObject(_Wire):
    id: int
    object_type: str
    confidence: float


class DetectionData(_Wire):
    """An image's new detections (detect worker, on security_events)."""

    camera_id: str
    file_path: str
    detected_at: IsoTime
    # hsid's extension: when the snapshot was taken (capture_time.py); null when unknown
    captured_at: IsoTime | None
    detections: list[DetectedObject]


class EventData(_Wire):
    """A stored event, in the reference's message schema (analyze worker)."""

    id: int
    event_id: int
    batch_id: str
    camera_id: str
    risk_score: int
    risk_level: str
    summary: str
    started_at: Annotated[datetime, PlainSerializer(
        lambda moment: moment.astimezone(UTC).isoformat(), return_type=str)]


class AlertData(_Wire):
    """An alert as webhooks, MQTT and the WebSocket get it (alerts/channels.alert_data);
    keys that a newer alert payload adds are kept, after these."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=False)

    id: str
    event_id: int
    rule_id: str | None
    severity: str
    created_at: str
    dedup_key: str
    rule_name: str | None = None
    camera_id: str | None = None
    camera_name: str | None = None
    risk_score: int | None = None
    risk_level: str | None = None
    summary: str | None = None
    started_at: str | None = None


class SystemStatusData(_Wire):
    """One system status snapshot (upkeep/status.py): the health verdict and report, queue
    depths, DLQ counts, detector and GPU figures, uptime, and an ISO UTC timestamp; the
    other facts the stages put into health.info follow as further keys."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    health: Literal["healthy", "unhealthy"]
    database: dict[str, Any]
    redis: dict[str, Any]
    stages: dict[str, Any]
    queues: dict[str, int]
    dlq: dict[str, int]
    detector: Any = None
    inference_fps: float | None = None
    gpu: dict[str, Any] | None = None
    uptime_seconds: int
    timestamp: str


class DetectionMessage(_Wire):
    type: Literal["detection"] = "detection"
    data: DetectionData


class EventMessage(_Wire):
    type: Literal["event"] = "event"
    data: EventData


class AlertMessage(_Wire):
    type: Literal["alert"] = "alert"
    data: AlertData


class SystemStatusMessage(_Wire):
    type: Literal["system_status"] = "system_status"
    data: SystemStatusData


Message = DetectionMessage | EventMessage | AlertMessage | SystemStatusMessage
_MESSAGE_TYPES: dict[str, type[Message]] = {
    "detection": DetectionMessage, "event": EventMessage, "alert": AlertMessage,
    "system_status": SystemStatusMessage,
}


def decode_message(raw: bytes | str) -> Message:
    """A security_events or system_status message, typed by its `type`; MalformedItem when
    it is none of them."""
    try:
        kind = json.loads(raw).get("type")
    except (ValueError, AttributeError):
        raise MalformedItem("not a JSON object") from None
    model = _MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise MalformedItem(f"unknown message type {kind!r}")
    try:
        return model.model_validate_json(raw, strict=False)
    except ValidationError as err:
        raise MalformedItem(_reason(err)) from None
