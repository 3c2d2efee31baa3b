"""Shared SQL mechanics for the resources: filtered pages with totals, one-row reads and updates.

SQL text is only ever assembled from the calling module's constants: allow-listed filter
fragments and column names from a validated body. Values always travel as $n parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
from pydantic import Field

from hsid.api.fields import Absent, DateTime, Int, Shape
from hsid.core.errors import NotFound

PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 1000
# Deep offsets still cost a scan of the skipped rows; past this, narrow by time instead.
PAGE_OFFSET_MAX = 10_000_000

# Totals are exact up to this many rows; past it they are the planner's estimate. A
# dashboard needs "about 60,000", not a 50 ms scan for the last digit (scripts/bench_api.py).
EXACT_COUNT_LIMIT = 10_000
# The planner's own arithmetic: rows per page at the last ANALYZE times the pages now, so it
# follows growth between ANALYZEs. NULL (never analysed, or empty) makes the caller count.
SELECT_ESTIMATES = """
SELECT c.relname,
       CASE WHEN c.reltuples < 0 OR c.relpages = 0 THEN NULL
            ELSE (c.reltuples / c.relpages
                  * (pg_relation_size(c.oid) / current_setting('block_size')::int))::bigint
       END AS estimate
FROM pg_class c WHERE c.oid = any($1::regclass[])
"""

Item = TypeVar("Item")


class Paged(Shape):
    """A list route's query parameters: its filters (in a subclass) plus limit and offset."""

    limit: Annotated[int, Int(1, PAGE_LIMIT_MAX)] = Field(PAGE_LIMIT_DEFAULT,
                                                          description="page size")
    offset: Annotated[int, Int(0, PAGE_OFFSET_MAX)] = Field(0, description="rows to skip")


class TimeRange(Paged):
    start: DateTime = Absent("at or after this time (ISO-8601, UTC if no offset)")
    end: DateTime = Absent("before this time (ISO-8601, UTC if no offset)")


class Page(Shape, Generic[Item]):  # the list envelope
    items: list[Item]
    count: int = Field(description="rows matching the filters, over all pages "
                       f"(past {EXACT_COUNT_LIMIT} rows, the database planner's estimate)")
    limit: int
    offset: int


def like_pattern(text: str) -> str:
    """A substring match for ILIKE, with the user's %, _ and \\ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def where_clause(
    filters: Mapping[str, str], values: Mapping[str, Any], first: int = 1
) -> tuple[str, list[Any]]:
    """`WHERE a AND b ...` from the fragments (each with one `{}` for its $n) whose value
    was given (not None), and the values in parameter order."""
    parts: list[str] = []
    args: list[Any] = []
    for name, fragment in filters.items():
        value = values.get(name)
        if value is None:
            continue
        args.append(value)
        parts.append(fragment.format(f"${first + len(args) - 1}"))
    return ("WHERE " + " AND ".join(parts)) if parts else "", args


async def row_counts(pool: asyncpg.Pool, tables: Sequence[str]) -> dict[str, int]:
    """Rows per table: exact below EXACT_COUNT_LIMIT rows, the planner's estimate above
    (an exact COUNT(*) reads every row: 11 ms for 100k events, the estimate microseconds).
    `tables` are the caller's constants, never user input."""
    estimates = {r["relname"]: r["estimate"]
                 for r in await pool.fetch(SELECT_ESTIMATES, list(tables))}
    small = [t for t in tables if (estimates.get(t) or 0) < EXACT_COUNT_LIMIT]
    exact: dict[str, int] = {}
    if small:
        exact = dict(await pool.fetchrow(
            "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in small)))
    return {table: exact.get(table, estimates.get(table, 0)) for table in tables}


@dataclass(frozen=True, slots=True)
class Listing:
    """A paginated list: `select` has {where}, {limit} and {offset} slots."""

    select: str
    table: str
    filters: Mapping[str, str]
    row: Callable[[asyncpg.Record], dict[str, Any]] = field(default=dict)

    @property
    def count(self) -> str:
        """Counts at most {cap} rows, so a broad filter never scans the whole table."""
        return ("SELECT count(*) FROM (SELECT 1 FROM " + self.table
                + " {where} LIMIT {cap}) AS capped")

    @property
    def explain(self) -> str:
        return "EXPLAIN (FORMAT JSON) SELECT 1 FROM " + self.table + " {where}"


async def _total(pool: asyncpg.Pool, listing: Listing, where: str, args: list[Any]) -> int:
    """Exact up to EXACT_COUNT_LIMIT matches, through the filter's indexes; past it, the
    planner's estimate (pg_class for a whole table, the filtered query's plan otherwise)."""
    if not where:
        return (await row_counts(pool, [listing.table]))[listing.table]
    sql = listing.count.format(where=where, cap=f"${len(args) + 1}")
    counted = await pool.fetchval(sql, *args, EXACT_COUNT_LIMIT)
    if counted < EXACT_COUNT_LIMIT:
        return counted
    plan = await pool.fetchval(listing.explain.format(where=where), *args)
    return max(counted, int(plan[0]["Plan"]["Plan Rows"]))  # the pool decodes json


async def fetch_page(pool: asyncpg.Pool, listing: Listing, query: Mapping[str, Any]) -> dict:
    """One page and the total over all pages, as the API's list envelope.

    The total needs its own count only when the page is full (or empty past the start):
    otherwise it follows from the page itself.
    """
    where, args = where_clause(listing.filters, query)
    limit, offset = query["limit"], query["offset"]
    sql = listing.select.format(
        where=where, limit=f"${len(args) + 1}", offset=f"${len(args) + 2}")
    rows = await pool.fetch(sql, *args, limit, offset)
    if 0 < len(rows) < limit or (not rows and offset == 0):
        total = offset + len(rows)
    else:  # an estimate must not contradict the rows just read
        total = await _total(pool, listing, where, args)
        total = max(total, offset + len(rows)) if rows else total
    return {"items": [listing.row(r) for r in rows], "count": total, "limit": limit,
            "offset": offset}


async def fetch_one(
    pool: asyncpg.Pool | asyncpg.Connection, sql: str, *args: Any, what: str
) -> asyncpg.Record:
    """The one row `sql` returns, or NotFound naming `what`."""
    row = await pool.fetchrow(sql, *args)
    if row is None:
        raise NotFound(f"{what} not found")
    return row


def set_clause(values: Mapping[str, Any], first: int) -> tuple[str, list[Any]]:
    """`col = $n, ...` for a validated body (its keys are the resource's declared fields)."""
    names = list(values)
    if not all(name.isidentifier() for name in names):
        raise ValueError(f"not column names: {names}")  # a bug: bodies are validated first
    sets = ", ".join(f"{name} = ${first + i}" for i, name in enumerate(names))
    return sets, [values[name] for name in names]


async def update_one(
    pool: asyncpg.Pool | asyncpg.Connection, template: str, values: Mapping[str, Any],
    *keys: Any, what: str,
) -> asyncpg.Record:
    """Run an UPDATE template (`{sets}` slot; keys are $1..$k) and return its row, or NotFound."""
    sets, args = set_clause(values, len(keys) + 1)
    return await fetch_one(pool, template.format(sets=sets), *keys, *args, what=what)
