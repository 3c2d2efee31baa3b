"""Redis key and channel names under the install's prefix, so installs sharing Redis never meet."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hsid.core import constants
from hsid.core.config import RedisConfig

# SCAN patterns are globs: a prefix is matched literally, whatever characters it holds.
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_CURRENT_HEAD, _CURRENT_TAIL = constants.BATCH_CURRENT.split("{camera_id}")
_BACKLOG_HEAD, _BACKLOG_TAIL = constants.BATCH_BACKLOG.split("{camera_id}")


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Every Redis name hsid uses: the base name from `hsid.core.constants` after `prefix`.

    A database number separates keys but not pub/sub channels, which are server-wide; only
    a prefix keeps two installs (or a test run and a daemon) on one Redis from receiving
    each other's events. Built once from `redis.prefix` and passed to whatever names Redis
    keys. Empty prefix: exactly the reference's names. Queue names shown by the API and CLI
    stay the logical ones (`detection_queue`); only what is sent to Redis carries the prefix.
    """

    prefix: str = ""

    @classmethod
    def from_config(cls, config: RedisConfig) -> Keyspace:
        return cls(config.prefix)

    def key(self, name: str) -> str:
        """Any other key (a rate-limit counter, say) under the prefix."""
        return self.prefix + name

    def queue(self, name: str) -> str:
        """The Redis list of the logical queue `name` (detection_queue, analysis_queue)."""
        return self.prefix + name

    def dlq(self, queue: str) -> str:
        return f"{self.prefix}{constants.DLQ_PREFIX}{queue}"

    def processing(self, queue: str, worker_id: str) -> str:
        return f"{self.prefix}{constants.PROCESSING_PREFIX}{queue}:{worker_id}"

    def dedupe(self, digest: str) -> str:
        return f"{self.prefix}{constants.DEDUPE_PREFIX}{digest}"

    def lock(self, duty: str) -> str:
        return f"{self.prefix}{constants.LOCK_PREFIX}{duty}"

    def channel(self, name: str) -> str:
        """A pub/sub channel (security_events, system_status)."""
        return self.prefix + name

    # --- Batch aggregation ----------------------------------------------------------------

    def batch_current(self, camera_id: str) -> str:
        return self.prefix + constants.BATCH_CURRENT.format(camera_id=camera_id)

    def batch_backlog(self, camera_id: str) -> str:
        """The camera's open backlog batch (hsid's extension, see constants)."""
        return self.prefix + constants.BATCH_BACKLOG.format(camera_id=camera_id)

    def batch_captured(self, batch_id: str) -> str:
        return self.prefix + constants.BATCH_CAPTURED.format(batch_id=batch_id)

    def batch_episode(self, camera_id: str) -> str:
        """The camera's open episode (hsid's extension, see constants)."""
        return self.prefix + constants.BATCH_EPISODE.format(camera_id=camera_id)

    def batch_episode_id(self, batch_id: str) -> str:
        """The episode a live batch belongs to."""
        return self.prefix + constants.BATCH_EPISODE_ID.format(batch_id=batch_id)

    def llm_budget(self, camera_id: str, hour: int) -> str:
        return f"{self.prefix}{constants.LLM_BUDGET_PREFIX}{camera_id}:{hour}"

    def batch(self, camera_id: str, batch_id: str, backlog: bool = False) -> list[str]:
        """current (or backlog), camera_id, detections, started_at, last_activity: a
        batch's keys, in the order the batcher's close script takes them."""
        return [
            self.batch_backlog(camera_id) if backlog else self.batch_current(camera_id),
            *(self.prefix + name.format(batch_id=batch_id) for name in (
                constants.BATCH_CAMERA, constants.BATCH_DETECTIONS,
                constants.BATCH_STARTED_AT, constants.BATCH_LAST_ACTIVITY)),
        ]

    @property
    def batch_id_prefix(self) -> str:
        """What precedes `<batch id>:<field>` in a batch's keys, for the add script, which
        names them from a batch id it reads inside Redis."""
        return self.prefix + constants.BATCH_CAMERA.split("{batch_id}")[0]

    def batch_current_pattern(self, backlog: bool = False) -> str:
        """A SCAN pattern matching every camera's current-batch (or backlog-batch) key of
        this install only."""
        head, tail = (_BACKLOG_HEAD, _BACKLOG_TAIL) if backlog else (_CURRENT_HEAD, _CURRENT_TAIL)
        return _GLOB_SPECIAL.sub(r"\\\1", self.prefix + head) + "*" + tail

    def camera_of_batch_current(self, key: str, backlog: bool = False) -> str:
        """The camera id in a key that batch_current_pattern(backlog) matched."""
        head, tail = (_BACKLOG_HEAD, _BACKLOG_TAIL) if backlog else (_CURRENT_HEAD, _CURRENT_TAIL)
        return key[len(self.prefix) + len(head) : len(key) - len(tail)]
