"""Batcher: reference keys (after the prefix), TTLs, window/idle/size closing, fast path, races."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as aioredis

from hsid.core.config import BatchConfig, Config
from hsid.core.context import StageContext
from hsid.core.keyspace import Keyspace
from hsid.pipeline.batcher import Batcher, NewDetection
from hsid.pipeline.sweeper import BatchSweeper
from tests.support import eventually

CAR = "car"


def det(id_: int, object_type: str = CAR, confidence: float = 0.6) -> NewDetection:
    return NewDetection(id=id_, object_type=object_type, confidence=confidence)


async def analysis_items(redis: aioredis.Redis, keyspace: Keyspace) -> list[dict]:
    return [json.loads(raw) for raw in await redis.lrange(keyspace.queue("analysis_queue"), 0, -1)]


async def test_detections_join_one_batch_with_the_reference_keys_and_ttls(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(), redis, keyspace)
    await batcher.add("front_door", [det(1), det(2)])
    await batcher.add("front_door", [det(3)])
    prefix = keyspace.prefix  # the reference's names, each after the install's prefix
    batch_id = (await redis.get(f"{prefix}batch:front_door:current")).decode()
    keys = {
        f"{prefix}batch:front_door:current",
        f"{prefix}batch:{batch_id}:camera_id",
        f"{prefix}batch:{batch_id}:detections",
        f"{prefix}batch:{batch_id}:started_at",
        f"{prefix}batch:{batch_id}:last_activity",
    }
    assert {k.decode() for k in await redis.keys("*")} == keys
    for key in keys:
        assert 3590 < await redis.ttl(key) <= 3600
    assert json.loads(await redis.get(f"{prefix}batch:{batch_id}:detections")) == [1, 2, 3]
    assert (await redis.get(f"{prefix}batch:{batch_id}:camera_id")).decode() == "front_door"
    started = float(await redis.get(f"{prefix}batch:{batch_id}:started_at"))
    assert float(await redis.get(f"{prefix}batch:{batch_id}:last_activity")) >= started
    assert await analysis_items(redis, keyspace) == []


async def test_batch_closes_after_its_window(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    batcher = Batcher(BatchConfig(window_seconds=0.4, idle_seconds=60), redis, keyspace)
    await batcher.add("yard", [det(1)])
    for id_ in (2, 3):  # activity keeps the idle timer from firing
        await asyncio.sleep(0.15)
        await batcher.add("yard", [det(id_)])
        assert await batcher.sweep() == 0
    await asyncio.sleep(0.15)
    assert await batcher.sweep() == 1
    [item] = await analysis_items(redis, keyspace)
    assert set(item) == {"batch_id", "camera_id", "detection_ids"}
    assert item["camera_id"] == "yard"
    assert item["detection_ids"] == [1, 2, 3]
    assert await redis.keys(keyspace.prefix + "batch:*") == []


async def test_batch_closes_after_idle_time(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    batcher = Batcher(BatchConfig(window_seconds=60, idle_seconds=0.2), redis, keyspace)
    await batcher.add("yard", [det(7)])
    assert await batcher.sweep() == 0
    await asyncio.sleep(0.25)
    assert await batcher.sweep() == 1
    assert [i["detection_ids"] for i in await analysis_items(redis, keyspace)] == [[7]]


async def test_batch_closes_at_max_size_and_the_next_detection_opens_a_new_one(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(max_detections=3), redis, keyspace)
    await batcher.add("drive", [det(1), det(2)])
    await batcher.add("drive", [det(3)])
    assert [i["detection_ids"] for i in await analysis_items(redis, keyspace)] == [[1, 2, 3]]
    await batcher.add("drive", [det(4)])
    batch_id = (await redis.get(keyspace.prefix + "batch:drive:current")).decode()
    assert json.loads(await redis.get(keyspace.prefix + f"batch:{batch_id}:detections")) == [4]


async def test_a_fast_path_snapshot_opens_an_episode_analysed_at_once_with_all_its_detections(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(), redis, keyspace)
    assert await batcher.add(
        "porch", [det(1, "person", 0.95), det(2, CAR, 0.6), det(3, "person", 0.5)]) is None
    [item] = await analysis_items(redis, keyspace)
    assert item["detection_ids"] == [1, 2, 3]  # the whole snapshot: "2 persons and a car"
    assert item["fast_path"] is True
    episode = (await redis.get(keyspace.batch_episode("porch"))).decode()
    assert item["batch_id"] == item["episode_id"] == episode
    assert 29_000 < await redis.pttl(keyspace.batch_episode("porch")) <= 30_000
    assert await redis.get(keyspace.batch_current("porch")) is None


async def test_detections_during_an_episode_join_the_batch_which_carries_the_episode(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(window_seconds=60, idle_seconds=0.3), redis, keyspace)
    await batcher.add("porch", [det(1, "person", 0.95)])
    for id_ in (2, 3, 4):  # still there, a high-confidence person each time
        await asyncio.sleep(0.1)
        batch_id = await batcher.add("porch", [det(id_, "person", 0.97)])
    assert len(await analysis_items(redis, keyspace)) == 1  # only the fast path so far
    await asyncio.sleep(0.35)  # idle: the batch closes and the episode ends
    assert await batcher.sweep() == 1
    fast, follow_up = await analysis_items(redis, keyspace)
    assert follow_up == {"batch_id": batch_id, "camera_id": "porch", "detection_ids": [2, 3, 4],
                         "episode_id": fast["episode_id"]}
    assert await redis.keys(keyspace.prefix + "batch:*") == []
    await batcher.add("porch", [det(5, "person", 0.95)])  # someone new: a new episode
    *_, again = await analysis_items(redis, keyspace)
    assert again["fast_path"] is True and again["episode_id"] != fast["episode_id"]


async def test_only_a_fast_path_class_keeps_an_episode_open(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(idle_seconds=0.3), redis, keyspace)
    await batcher.add("drive", [det(1, "person", 0.95)])
    for id_ in (2, 3, 4):  # the parked car, seen in every snapshot
        await asyncio.sleep(0.12)
        await batcher.add("drive", [det(id_)])
    assert await redis.get(keyspace.batch_episode("drive")) is None


async def test_racing_workers_open_one_episode(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    config = BatchConfig()
    batchers = [Batcher(config, redis, keyspace) for _ in range(5)]
    await asyncio.gather(*(b.add("porch", [det(n, "person", 0.95)])
                           for n, b in enumerate(batchers)))
    [fast] = await analysis_items(redis, keyspace)
    batch_id = (await redis.get(keyspace.batch_current("porch"))).decode()
    joined = json.loads(await redis.get(keyspace.batch("porch", batch_id)[2]))
    assert sorted(fast["detection_ids"] + joined) == list(range(5))


async def test_fast_path_can_be_switched_off(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    batcher = Batcher(BatchConfig(fast_path_enabled=False), redis, keyspace)
    await batcher.add("porch", [det(1, "person", 0.99)])
    assert await analysis_items(redis, keyspace) == []
    assert await redis.get(keyspace.prefix + "batch:porch:current") is not None
    assert await redis.get(keyspace.batch_episode("porch")) is None


async def test_nothing_detected_opens_no_batch(redis: aioredis.Redis, keyspace: Keyspace) -> None:
    await Batcher(BatchConfig(), redis, keyspace).add("porch", [])
    assert await redis.keys(keyspace.prefix + "batch:*") == []


async def test_racing_sweepers_close_each_batch_exactly_once(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    config = BatchConfig(window_seconds=60, idle_seconds=0.1)
    first, second = Batcher(config, redis, keyspace), Batcher(config, redis, keyspace)
    for n in range(20):
        await first.add(f"cam{n}", [det(n)])
    await asyncio.sleep(0.15)
    closed = await asyncio.gather(first.sweep(), second.sweep(), first.sweep())
    assert sum(closed) == 20
    items = await analysis_items(redis, keyspace)
    assert sorted(i["detection_ids"][0] for i in items) == list(range(20))
    assert len({i["batch_id"] for i in items}) == 20


# --- Backlogs: snapshots taken well before they arrived -------------------------------------

ARRIVED = datetime(2025, 11, 23, 8, 40, tzinfo=UTC)


def taken(minutes_before: float) -> dict[str, datetime]:
    return {"captured_at": ARRIVED - timedelta(minutes=minutes_before), "arrived_at": ARRIVED}


async def test_a_backlog_is_batched_apart_from_the_live_batch_and_cut_by_capture_time(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(window_seconds=90, idle_seconds=60), redis, keyspace)
    live = await batcher.add("yard", [det(1)], **taken(0.1))  # within backlog_seconds
    first = await batcher.add("yard", [det(2)], **taken(7 * 60))  # 01:40
    assert await batcher.add("yard", [det(3)], **taken(7 * 60 - 0.5)) == first  # 30 s later
    second = await batcher.add("yard", [det(4)], **taken(4 * 60))  # 04:40: hours later

    assert len({live, first, second}) == 3
    assert (await redis.get(keyspace.batch_current("yard"))).decode() == live
    assert (await redis.get(keyspace.batch_backlog("yard"))).decode() == second
    [closed] = await analysis_items(redis, keyspace)  # the first backlog batch, cut at once
    assert (closed["batch_id"], closed["detection_ids"]) == (first, [2, 3])
    assert not await redis.exists(keyspace.batch_captured(first))  # its keys all went


async def test_a_backlog_batch_keeps_the_window_by_capture_time(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(window_seconds=90, idle_seconds=60), redis, keyspace)
    ids = [await batcher.add("yard", [det(n)], **taken(60 - n * 0.75)) for n in range(4)]
    # captured 0, 45, 90 and 135 s after the first: the third is a window after the first
    assert ids[0] == ids[1] != ids[2] == ids[3]


async def test_the_sweeper_closes_a_backlog_batch_once_the_backlog_stops_coming(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(window_seconds=0.2, idle_seconds=0.4), redis, keyspace)
    batch_id = await batcher.add("yard", [det(1)], **taken(120))
    await asyncio.sleep(0.3)  # past the live window: a backlog batch is not closed by it
    await batcher.add("yard", [det(2)], **taken(120))
    assert await batcher.sweep() == 0
    await asyncio.sleep(0.5)
    assert await batcher.sweep() == 1
    [item] = await analysis_items(redis, keyspace)
    assert (item["batch_id"], item["camera_id"], item["detection_ids"]) == (batch_id, "yard",
                                                                           [1, 2])
    assert [k async for k in redis.scan_iter(match=f"{keyspace.prefix}*batch*")] == []


async def test_without_a_capture_time_or_a_recent_one_detections_join_the_live_batch(
    redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    batcher = Batcher(BatchConfig(backlog_seconds=300), redis, keyspace)
    a = await batcher.add("yard", [det(1)])
    b = await batcher.add("yard", [det(2)], **taken(4))  # 4 minutes: a slow upload, not a backlog
    assert a == b
    assert not await redis.exists(keyspace.batch_backlog("yard"))


async def test_the_sweeper_sleeps_with_nothing_open_and_wakes_for_a_filed_detection(
    config: Config, db: asyncpg.Pool, redis: aioredis.Redis, keyspace: Keyspace,
) -> None:
    """An idle daemon's sweeper does not sweep every interval: it sleeps until its batcher
    files a detection (or RECONCILE_CHECK_SECONDS), then keeps the batch's timers."""
    config = config.with_overrides({"batch": {"idle_seconds": 0.3, "window_seconds": 60,
                                              "sweep_interval_seconds": 0.05,
                                              "fast_path_enabled": False}})
    batcher = Batcher(config.batch, redis, keyspace)
    sweeps = 0
    real_sweep = batcher.sweep

    async def counted() -> int:
        nonlocal sweeps
        sweeps += 1
        return await real_sweep()

    batcher.sweep = counted  # type: ignore[method-assign]
    stopping = asyncio.Event()
    task = asyncio.create_task(BatchSweeper(
        StageContext(config, db, redis, keyspace, stopping=stopping), batcher).run())
    try:
        await asyncio.sleep(0.5)
        assert sweeps == 1, "nothing open: one sweep at start, then sleep"
        await batcher.add("porch", [det(1)])
        await eventually(lambda: analysis_items(redis, keyspace), within=3.0,
                         what="the batch closed by its idle timer")
        assert sweeps >= 3, "with a batch open it swept at its interval"
    finally:
        stopping.set()
        await asyncio.wait_for(task, 2.0)
