"""The one small error hierarchy: every failure hsid raises on purpose is one of these."""

import asyncpg
import redis.asyncio as aioredis

# What the stores' libraries raise when PostgreSQL or Redis is down or gone: background
# services catch these, log, and try again on their next round. asyncpg raises its
# InternalClientError ("cannot switch to state ...") on a connection killed mid-query.
STORE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncpg.exceptions.InternalClientError, aioredis.RedisError)


class HsidError(Exception):
    """Base of every error hsid raises on purpose; `code` is the stable API error key."""

    code = "error"


class NotFound(HsidError):
    code = "not_found"


class Conflict(HsidError):
    code = "conflict"


class InvalidInput(HsidError):
    """Bad input from a user or client; `field` names the offending key when there is one."""

    code = "invalid_input"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unavailable(HsidError):
    """A store or model we depend on is not reachable right now."""

    code = "unavailable"


class TransientError(HsidError):
    """Worth retrying: a Redis or database hiccup, a busy model."""

    code = "transient"


class PermanentError(HsidError):
    """Retrying cannot help (a corrupt image): the job goes straight to the dead-letter queue."""

    code = "permanent"


class ConfigError(HsidError):
    """The configuration is invalid; the message names the key and the value."""

    code = "config"
