"""The typed queue items, dead letters and messages: their encoding and their one decoder."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from hsid.core.config import BatchConfig, QueueConfig
from hsid.core.constants import ANALYSIS_QUEUE, DETECTION_QUEUE
from hsid.core.keyspace import Keyspace
from hsid.core.messages import (
    AnalysisItem,
    DeadLetter,
    DetectedObject,
    DetectionData,
    DetectionItem,
    DetectionMessage,
    EventData,
    EventMessage,
    MalformedItem,
    SystemStatusData,
    SystemStatusMessage,
    decode_item,
    decode_message,
)
from hsid.core.queues import ReliableQueue, dlq_items
from hsid.pipeline.batcher import Batcher, NewDetection

FAST = QueueConfig(max_attempts=3, max_length=10_000, retry_base_seconds=0.01)
MOMENT = datetime(2025, 12, 23, 10, 30, tzinfo=UTC)


def keys(text: str) -> list[str]:
    return list(json.loads(text))


# --- encode(): the reference's key order -------------------------------------------------------


def test_queue_items_encode_in_the_reference_key_order() -> None:
    detection = DetectionItem(camera_id="front_door", file_path="/cams/front_door/1.jpg",
                              timestamp=MOMENT)
    assert detection.encode() == ('{"camera_id":"front_door","file_path":'
                                  '"/cams/front_door/1.jpg","timestamp":'
                                  '"2025-12-23T10:30:00.000000"}')
    analysis = AnalysisItem(batch_id="abc123-def456", camera_id="front_door",
                            detection_ids=[1, 2, 3])
    assert analysis.encode() == ('{"batch_id":"abc123-def456","camera_id":"front_door",'
                                 '"detection_ids":[1,2,3]}')
    # hsid's extensions follow the reference's keys, and only when set.
    extended = AnalysisItem(batch_id="e", camera_id="c", detection_ids=[1], episode_id="e",
                            fast_path=True, crash_count=1)
    assert keys(extended.encode()) == ["batch_id", "camera_id", "detection_ids", "episode_id",
                                       "fast_path", "crash_count"]
    uploaded = DetectionItem(camera_id="c", file_path="/f", timestamp=MOMENT, sha256="a" * 64,
                             image_path="/f", size=3, mtime_ns=4)
    assert keys(uploaded.encode()) == ["camera_id", "file_path", "timestamp", "sha256",
                                       "image_path", "size", "mtime_ns"]


def test_dead_letter_and_messages_encode_in_the_reference_key_order() -> None:
    letter = DeadLetter(original_job={"camera_id": "c"}, error="boom", attempt_count=3,
                        first_failed_at=MOMENT, last_failed_at=MOMENT,
                        queue_name=DETECTION_QUEUE)
    assert keys(letter.encode()) == ["original_job", "error", "attempt_count",
                                     "first_failed_at", "last_failed_at", "queue_name"]
    assert json.loads(letter.encode())["first_failed_at"] == "2025-12-23T10:30:00.000000"

    event = EventMessage(data=EventData(id=1, event_id=1, batch_id="abc123",
                                        camera_id="front_door", risk_score=75,
                                        risk_level="high", summary="Person at the door",
                                        started_at=MOMENT))
    decoded = json.loads(event.encode())
    assert list(decoded) == ["type", "data"] and decoded["type"] == "event"
    assert list(decoded["data"]) == ["id", "event_id", "batch_id", "camera_id", "risk_score",
                                     "risk_level", "summary", "started_at"]
    assert decode_message(event.encode()) == event

    detection = DetectionMessage(data=DetectionData(
        camera_id="c", file_path="/f", detected_at=MOMENT, captured_at=None,
        detections=[DetectedObject(id=1, object_type="person", confidence=0.9)]))
    assert keys(detection.encode()) == ["type", "data"]
    assert decode_message(detection.encode()) == detection


def test_status_message_keeps_the_other_health_facts_after_its_own() -> None:
    data = SystemStatusData(health="healthy", database={"status": "up"}, redis={"status": "up"},
                            stages={}, queues={}, dlq={}, uptime_seconds=1, timestamp="t",
                            backpressure={DETECTION_QUEUE: False})
    encoded = SystemStatusMessage(data=data).encode()
    assert keys(json.dumps(json.loads(encoded)["data"]))[-1] == "backpressure"
    message = decode_message(encoded)
    assert isinstance(message, SystemStatusMessage) and message.data.health == "healthy"


def test_building_an_item_with_an_unknown_or_mistyped_key_fails() -> None:
    with pytest.raises(ValueError, match="episodeid"):
        AnalysisItem(batch_id="b", camera_id="c", detection_ids=[1], episodeid="e")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="detection_ids"):
        AnalysisItem(batch_id="b", camera_id="c", detection_ids=["1"])  # type: ignore[list-item]


# --- decode_item: one decoder per queue --------------------------------------------------------


MALFORMED = {
    DETECTION_QUEUE: [
        (b"not json {", "not JSON"),
        (b"[1, 2]", "not a JSON object but list"),
        (b'{"file_path": "/f"}', "camera_id"),
        (b'{"camera_id": "c", "file_path": "/f", "timestamp": "yesterday"}', "timestamp"),
        (b'{"camera_id": 7, "file_path": "/f"}', "camera_id"),
    ],
    ANALYSIS_QUEUE: [
        (b"", "not JSON"),
        (b'"text"', "not a JSON object but str"),
        (b'{"batch_id": "b", "camera_id": "c", "detection_ids": []}', "detection_ids"),
        (b'{"batch_id": "b", "camera_id": "c", "detection_ids": [true]}', "detection_ids"),
        (b'{"batch_id": "b", "camera_id": "c", "detection_ids": ["1"]}', "detection_ids"),
        (b'{"camera_id": "c", "detection_ids": [1]}', "batch_id"),
    ],
}


@pytest.mark.parametrize(("queue", "raw", "reason"),
                         [(q, raw, reason) for q, cases in MALFORMED.items()
                          for raw, reason in cases])
def test_decode_item_names_what_is_wrong(queue: str, raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedItem) as info:
        decode_item(queue, raw)
    assert str(info.value).startswith("malformed queue item: ")
    assert reason in info.value.reason


def test_decode_item_ignores_unknown_keys() -> None:
    raw = b'{"batch_id": "b", "camera_id": "c", "detection_ids": [1], "from_the_future": 1}'
    assert decode_item(ANALYSIS_QUEUE, raw) == AnalysisItem(batch_id="b", camera_id="c",
                                                            detection_ids=[1])


@pytest.mark.parametrize(("queue", "raw", "reason"),
                         [(q, raw, reason) for q, cases in MALFORMED.items()
                          for raw, reason in cases])
async def test_malformed_item_in_each_queue_becomes_a_dead_letter_with_its_reason(
    redis: aioredis.Redis, keyspace: Keyspace, queue: str, raw: bytes, reason: str,
) -> None:
    consumer = ReliableQueue(redis, queue, "w1", FAST, keyspace=keyspace)
    good = (DetectionItem(camera_id="c", file_path="/f", timestamp=MOMENT)
            if queue == DETECTION_QUEUE
            else AnalysisItem(batch_id="b", camera_id="c", detection_ids=[1]))
    await redis.rpush(keyspace.queue(queue), raw)
    await consumer.push(good)

    jobs = await consumer.take_batch(5, 1)

    assert [job.item for job in jobs] == [good]  # the consumer goes on with the next one
    (entry,) = await dlq_items(redis, keyspace, queue)
    assert entry["error"].startswith("malformed queue item: ") and reason in entry["error"]
    assert entry["queue_name"] == queue and entry["attempt_count"] == 1
    # kept as the queue held it: its JSON object, else its text
    try:
        held = json.loads(raw)
    except ValueError:
        held = None
    assert entry["original_job"] == (held if isinstance(held, dict) else raw.decode())
    assert await redis.llen(consumer.processing_key) == 1  # only the good one in flight


# --- the batcher's items -----------------------------------------------------------------------


async def test_close_script_output_decodes_as_the_typed_analysis_item(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(fast_path_enabled=False), redis, keyspace)
    batch_id = await batcher.add("porch", [NewDetection(11, "car", 0.6),
                                           NewDetection(12, "dog", 0.7)])
    await batcher.add("porch", [NewDetection(13, "car", 0.8)])
    assert batch_id is not None
    assert await batcher.close("porch", batch_id, force=True)

    (raw,) = await redis.lrange(keyspace.queue(ANALYSIS_QUEUE), 0, -1)
    item = decode_item(ANALYSIS_QUEUE, raw)
    assert item == AnalysisItem(batch_id=batch_id, camera_id="porch",
                                detection_ids=[11, 12, 13])
    assert raw.decode() == item.encode()  # byte for byte what the model writes


async def test_close_script_output_with_an_episode_decodes_too(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(), redis, keyspace)
    assert await batcher.add("gate", [NewDetection(1, "person", 0.95)]) is None  # fast path
    batch_id = await batcher.add("gate", [NewDetection(2, "person", 0.5)])
    assert batch_id is not None
    assert await batcher.close("gate", batch_id, force=True)

    fast, follow_up = [decode_item(ANALYSIS_QUEUE, raw) for raw in
                       await redis.lrange(keyspace.queue(ANALYSIS_QUEUE), 0, -1)]
    assert isinstance(fast, AnalysisItem) and isinstance(follow_up, AnalysisItem)
    assert fast.fast_path is True and fast.episode_id == fast.batch_id
    assert fast.detection_ids == [1]
    assert follow_up == AnalysisItem(batch_id=batch_id, camera_id="gate", detection_ids=[2],
                                     episode_id=fast.episode_id)


async def test_fast_path_waits_for_room_in_a_full_analysis_queue(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    queue = ReliableQueue(redis, ANALYSIS_QUEUE, "batcher", QueueConfig(max_length=1),
                          keyspace=keyspace)
    await queue.push(AnalysisItem(batch_id="old", camera_id="yard", detection_ids=[9]))
    batcher = Batcher(BatchConfig(), redis, keyspace, queue=queue)

    adding = asyncio.create_task(batcher.add("gate", [NewDetection(1, "person", 0.95)]))
    await asyncio.sleep(0.5)
    assert not adding.done()  # back-pressure: no bare RPUSH past max_length
    assert await redis.llen(keyspace.queue(ANALYSIS_QUEUE)) == 1
    assert await redis.get(keyspace.batch_episode("gate")) is None  # no episode without item

    await redis.lpop(keyspace.queue(ANALYSIS_QUEUE))
    assert await asyncio.wait_for(adding, 5) is None  # went to the fast path
    (raw,) = await redis.lrange(keyspace.queue(ANALYSIS_QUEUE), 0, -1)
    item = decode_item(ANALYSIS_QUEUE, raw)
    assert isinstance(item, AnalysisItem) and item.fast_path and item.detection_ids == [1]
    assert (await redis.get(keyspace.batch_episode("gate"))).decode() == item.episode_id
