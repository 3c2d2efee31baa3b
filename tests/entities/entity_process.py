"""One hsid process recognising sightings, for the test of processes matching at once.

    python -m tests.entities.entity_process DATABASE_URL GO_FILE ROUNDS FIRST_DETECTION_ID

Waits for GO_FILE to exist (so both processes start together), then records one sighting
per round r, of detection FIRST_DETECTION_ID + r, looking like "person r" (a one-hot
embedding along dimension r, with a little noise of its own): the first half in one call,
as a detect worker does an inference batch, the rest one call each. Prints the number
of sightings recorded.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from hsid.core.config import Config
from hsid.core.db import create_pool
from hsid.entities.matcher import EntityMatcher, Sighting

DIMENSIONS = 48


def _wait_for(go: Path) -> None:
    while not go.exists():
        time.sleep(0.01)


async def main(url: str, go: Path, rounds: int, first_id: int) -> int:
    pool = await create_pool(Config().database, url)
    matcher = EntityMatcher(Config().entities)
    rng = np.random.default_rng(first_id)
    try:
        await asyncio.to_thread(_wait_for, go)
        sightings = []
        for r in range(rounds):
            vector = np.eye(DIMENSIONS, dtype=np.float32)[r] + rng.normal(0, 0.01, DIMENSIONS)
            sightings.append(Sighting(first_id + r, "front_door", "person", datetime.now(UTC),
                                      (vector / np.linalg.norm(vector)).astype(np.float32)))
        # Half in one call (an inference batch: one long transaction, which the other
        # process's overlaps), the rest one by one (the cache following the other's rows).
        half = rounds // 2
        recorded = len(await matcher.record(pool, sightings[:half]))
        for sighting in sightings[half:]:
            recorded += len(await matcher.record(pool, [sighting]))
        return recorded
    finally:
        await pool.close()


if __name__ == "__main__":
    count = asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]),
                             int(sys.argv[4])))
    print(count)
