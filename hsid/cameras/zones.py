"""Zones: which of a camera's enabled zones a detection lies in (normalised coordinates)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

SELECT_ENABLED_ZONES = """
SELECT id, name, zone_type, coordinates, shape FROM zones
WHERE camera_id = $1 AND enabled ORDER BY priority DESC, name
"""


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    name: str
    zone_type: str
    points: tuple[tuple[float, float], ...]  # normalised 0..1, [x, y]
    shape: str  # rectangle (2 corner points, or 4) | polygon


async def enabled_zones(pool: asyncpg.Pool, camera_id: str) -> list[Zone]:
    rows = await pool.fetch(SELECT_ENABLED_ZONES, camera_id)
    return [Zone(r["id"], r["name"], r["zone_type"],
                 tuple((float(x), float(y)) for x, y in r["coordinates"]), r["shape"])
            for r in rows]


def contains(zone: Zone, x: float, y: float) -> bool:
    """Is the normalised point inside the zone? A 2-point rectangle is its corners."""
    if zone.shape == "rectangle" and len(zone.points) == 2:
        (x0, y0), (x1, y1) = zone.points
        return min(x0, x1) <= x <= max(x0, x1) and min(y0, y1) <= y <= max(y0, y1)
    inside = False  # ray casting: count edge crossings to the right of the point
    points = zone.points
    for (xa, ya), (xb, yb) in zip(points, points[1:] + points[:1], strict=True):
        if (ya > y) != (yb > y) and x < xa + (y - ya) * (xb - xa) / (yb - ya):
            inside = not inside
    return inside


def zones_of_box(zones: list[Zone], box: tuple[int, int, int, int], width: int,
                 height: int) -> list[Zone]:
    """The zones holding the bottom centre of a pixel box (x, y, w, h): where a person or
    vehicle stands, which is what an entry-point or driveway zone is about."""
    x, y, w, h = box
    point = ((x + w / 2) / max(width, 1), (y + h) / max(height, 1))
    return [zone for zone in zones if contains(zone, *point)]
