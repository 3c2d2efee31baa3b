"""The review page in Debian's chromium against the real daemon: the key prompt, a snapshot
that appears live, filters, review singly and in bulk (audited), alerts, cameras, and a phone
in dark mode. Each test leaves screenshots of what it saw (see conftest.screenshots)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tests.browser.conftest import API_KEY, KEY_NAME, PageDaemon

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or, in CI, fails) saying so
    expect = None

Box = tuple[int, int, int, int]  # x, y, width, height in pixels
# What the tiny detector sees as a person at 0.95: a solid red patch (BGR).
RED = (0, 0, 255)
INSERT_CAMERA = "INSERT INTO cameras (id, name, folder_path, last_seen_at) VALUES ($1, $2, $3, $4)"
INSERT_DETECTION = """
INSERT INTO detections (camera_id, file_path, file_type, detected_at, object_type, confidence,
                        bbox_x, bbox_y, bbox_width, bbox_height, thumbnail_path, captured_at)
VALUES ($1, $2, 'image/jpeg', $3, $4, $5, $6, $7, $8, $9, $10, $3) RETURNING id
"""
INSERT_EVENT = """
INSERT INTO events (batch_id, camera_id, started_at, ended_at, risk_score, risk_level, summary,
                    reasoning, detection_ids, reviewed, is_fast_path)
VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, $9, false) RETURNING id
"""
INSERT_ALERT = """
INSERT INTO alerts (event_id, severity, status, dedup_key, channels, metadata)
VALUES ($1, $2, 'delivered', $3, $4, $5) RETURNING id
"""
LEVELS = ((0, "low"), (30, "medium"), (60, "high"), (85, "critical"))


def scene(boxes: list[Box], seed: int, fill: tuple[int, int, int] | None = None) -> np.ndarray:
    """A 1280x720 dusk-grey yard with a figure in each box (solid `fill` for the detector)."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(50, 120, (9, 16, 3), dtype=np.uint8), (1280, 720),
                       interpolation=cv2.INTER_CUBIC)
    cv2.rectangle(image, (0, 520), (1280, 720), (70, 80, 85), -1)  # the path
    for x, y, w, h in boxes:
        if fill is not None:
            image[y:y + h, x:x + w] = fill
        else:
            cv2.ellipse(image, (x + w // 2, y + h // 6), (w // 5, h // 8), 0, 0, 360,
                        (150, 170, 200), -1)
            cv2.rectangle(image, (x + w // 5, y + h // 4), (x + 4 * w // 5, y + h),
                          (60, 40, 160), -1)
    return image


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def level_of(score: int) -> str:
    return next(level for floor, level in reversed(LEVELS) if score >= floor)


def add_camera(daemon: PageDaemon, camera_id: str, name: str) -> None:
    # Its folder under the camera root is never made: the watcher would take seeded images.
    daemon.sql(INSERT_CAMERA, camera_id, name, str(daemon.camera_root / camera_id),
               datetime.now(UTC) - timedelta(minutes=4))


def add_event(daemon: PageDaemon, camera_id: str, score: int, *, hours_ago: float = 1,
              reviewed: bool = False, summary: str = "", boxes: tuple[Box, ...] = (
                  (520, 260, 130, 330),)) -> int:
    """An event of one snapshot (kept in the state dir) with a person in each box."""
    moment = datetime.now(UTC) - timedelta(hours=hours_ago)
    folder = daemon.state_dir / "seeded" / camera_id
    folder.mkdir(parents=True, exist_ok=True)
    image = scene(list(boxes), seed=score)
    source = folder / f"{uuid.uuid4().hex}.jpg"
    source.write_bytes(jpeg(image))
    ids = []
    for index, (x, y, w, h) in enumerate(boxes):
        thumbnail = source.with_name(f"{source.stem}_{index}.jpg")
        thumbnail.write_bytes(jpeg(image[max(0, y - 20):y + h + 20, max(0, x - 20):x + w + 20]))
        [row] = daemon.sql(INSERT_DETECTION, camera_id, str(source), moment, "person",
                           0.91 - index / 10, x, y, w, h, str(thumbnail))
        ids.append(row["id"])
    [row] = daemon.sql(
        INSERT_EVENT, uuid.uuid4().hex, camera_id, moment, score, level_of(score),
        summary or f"A person near the {camera_id.replace('_', ' ')} ({score})",
        "One person, standing still for about a minute.\nNo vehicle, nothing carried.",
        json.dumps(ids), reviewed)
    return row["id"]


def shown_ids(page: Any) -> list[int]:
    return page.locator("li.event").evaluate_all("rows => rows.map(r => Number(r.dataset.id))")


def expect_rows(page: Any, ids: list[int]) -> None:
    expect(page.locator("li.event")).to_have_count(len(ids))
    assert sorted(shown_ids(page)) == sorted(ids)


def local_input(page: Any, moment: datetime) -> str:
    """A datetime-local value for `moment` in the browser's own time zone."""
    return page.evaluate("ms => new Date(ms - new Date(ms).getTimezoneOffset() * 60000)"
                         ".toISOString().slice(0, 16)", moment.timestamp() * 1000)


def test_the_page_asks_for_the_key_once_and_keeps_it(
    browser: Any, page_daemon: PageDaemon, screenshots: Path,
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    try:
        tab.goto(page_daemon.base_url)
        dialog = tab.locator("#key-dialog")
        expect(dialog).to_be_visible()
        tab.screenshot(path=screenshots / "key-prompt.png")
        tab.fill("#key-input", "not-the-key")
        tab.press("#key-input", "Enter")
        expect(tab.locator("#key-error")).to_contain_text("refused")
        tab.fill("#key-input", API_KEY)
        tab.press("#key-input", "Enter")
        expect(dialog).to_be_hidden()
        expect(tab.locator("#system")).to_contain_text("detector")
        expect(tab.locator("#live")).to_have_text("live")
        tab.reload()  # kept in this browser: no second prompt
        expect(tab.locator("#system")).to_contain_text("detector")
        expect(dialog).to_be_hidden()
        assert tab.evaluate("localStorage.getItem('hsid.apiKey')") == API_KEY
    finally:
        context.close()


def test_a_snapshot_dropped_into_a_camera_folder_appears_live(
    page: Any, page_daemon: PageDaemon, screenshots: Path,
) -> None:
    page.goto(page_daemon.base_url)
    expect(page.locator("#live")).to_have_text("live")
    camera = page_daemon.camera_root / "Back Yard"
    camera.mkdir()
    partial = camera / ".snap_0001.jpg.part"  # as an FTP server writes: then renamed
    partial.write_bytes(jpeg(scene([(560, 250, 120, 300)], seed=7, fill=RED)))
    partial.rename(camera / "snap_0001.jpg")
    live = page.locator("li.live-item", has_text="person")
    expect(live).to_be_visible()
    row = page.locator("li.event", has_text="Back Yard")
    expect(row).to_have_count(1)
    expect(row).to_have_class(re.compile(r"\bfresh\b"))
    expect(live).to_have_class(re.compile(r"\bdone\b"))
    expect(row.locator("img.thumb")).to_have_attribute("src", re.compile("^blob:"))
    page.screenshot(path=screenshots / "events-live.png")
    row.locator("a.body").click()
    expect(page.locator("figure.annotated img")).to_have_attribute("src", re.compile("^blob:"))
    expect(page.locator(".detail table.detections")).to_contain_text("person")
    expect(page.locator(".detail .reasoning")).not_to_be_empty()
    page.screenshot(path=screenshots / "event-live-detail.png", full_page=True)


def test_filters_narrow_the_list_and_survive_a_reload(
    page: Any, page_daemon: PageDaemon, screenshots: Path,
) -> None:
    add_camera(page_daemon, "garage", "Garage")
    recent = add_event(page_daemon, "garage", 70, hours_ago=1)
    low = add_event(page_daemon, "garage", 10, hours_ago=2, summary="A cat on the bins")
    seen = add_event(page_daemon, "garage", 75, hours_ago=3, reviewed=True)
    old = add_event(page_daemon, "garage", 80, hours_ago=72)
    page.goto(f"{page_daemon.base_url}/#/events")
    page.select_option("select[name=camera_id]", "garage")
    expect_rows(page, [recent, low, seen, old])
    page.select_option("select[name=risk_level]", "high")
    expect_rows(page, [recent, seen, old])
    page.select_option("select[name=reviewed]", "false")
    expect_rows(page, [recent, old])
    page.fill("input[name=start]", local_input(page, datetime.now(UTC) - timedelta(days=1)))
    expect_rows(page, [recent])
    page.screenshot(path=screenshots / "events-filtered.png")
    page.reload()
    expect_rows(page, [recent])
    assert page.locator("select[name=risk_level]").input_value() == "high"
    page.click("text=Clear")
    expect(page.locator("li.event", has_text="Garage")).to_have_count(4)


def test_review_in_bulk_and_singly_changes_the_rows_and_is_audited(
    page: Any, page_daemon: PageDaemon, screenshots: Path,
) -> None:
    add_camera(page_daemon, "porch", "Porch")
    page_daemon.sql("INSERT INTO zones (id, camera_id, name, zone_type, coordinates, color) "
                    "VALUES ('steps', 'porch', 'Front steps', 'entry_point', $1, '#F59E0B')",
                    [[0.35, 0.55], [0.65, 0.95]])
    first, second = (add_event(page_daemon, "porch", score, hours_ago=h)
                     for score, h in ((40, 0.5), (55, 0.7)))
    single = add_event(page_daemon, "porch", 88, hours_ago=0.2,
                       boxes=((500, 250, 120, 320), (930, 280, 110, 300)),
                       summary="Two people at the front steps after midnight")
    page.goto(f"{page_daemon.base_url}/#/events?camera_id=porch")
    expect_rows(page, [first, second, single])
    for event_id in (first, second):
        page.check(f"li.event[data-id='{event_id}'] input[type=checkbox]")
    page.fill("input[aria-label='review note']", "the postman")
    page.screenshot(path=screenshots / "events-selected.png")
    page.click("button:text-is('Mark reviewed')")
    for event_id in (first, second):
        row = page.locator(f"li.event[data-id='{event_id}']")
        expect(row).to_have_class(re.compile(r"\breviewed\b"))
        expect(row.locator(".state")).to_have_text("✓ reviewed")
        expect(row.locator(".notes")).to_contain_text("the postman")
    expect(page.locator(f"li.event[data-id='{single}'] .state")).to_have_text("new")
    rows = page_daemon.sql("SELECT id, reviewed, notes FROM events WHERE camera_id = 'porch' "
                           "ORDER BY id")
    assert [(r["reviewed"], r["notes"]) for r in rows] == [
        (True, "the postman"), (True, "the postman"), (False, None)]
    [audit] = page_daemon.sql("SELECT * FROM audit_logs WHERE action = 'events_reviewed'")
    assert (audit["actor"], audit["status"]) == (KEY_NAME, "success")
    assert audit["details"]["ids"] == [first, second]

    page.click(f"li.event[data-id='{single}'] a.body")
    expect(page.locator("figure.annotated svg polygon")).to_have_count(1)  # the zone
    expect(page.locator("table.detections td.zones")).to_have_text(["Front steps", "none"])
    page.fill(".review textarea", "neighbours coming home")
    page.screenshot(path=screenshots / "event-detail.png", full_page=True)
    page.click(".review button:text-is('Mark reviewed')")
    expect(page.locator(".review .state")).to_have_text("✓ Reviewed")
    [audit] = page_daemon.sql("SELECT * FROM audit_logs WHERE action = 'event_reviewed'")
    assert (audit["resource_id"], audit["actor"]) == (str(single), KEY_NAME)
    [row] = page_daemon.sql("SELECT reviewed, notes FROM events WHERE id = $1", single)
    assert (row["reviewed"], row["notes"]) == (True, "neighbours coming home")


def test_alerts_are_acknowledged_and_dismissed(
    page: Any, page_daemon: PageDaemon, screenshots: Path,
) -> None:
    add_camera(page_daemon, "gate", "Side gate")
    alerts = []
    for score, severity in ((92, "critical"), (64, "high")):
        event_id = add_event(page_daemon, "gate", score, hours_ago=0.1,
                             summary=f"Someone at the side gate ({score})")
        [row] = page_daemon.sql(INSERT_ALERT, event_id, severity, f"gate:{score}", ["log"], {
            "camera_id": "gate", "camera_name": "Side gate", "summary":
            f"Someone at the side gate ({score})", "rule_name": "Night visitors"})
        alerts.append(str(row["id"]))
    page.goto(f"{page_daemon.base_url}/#/alerts")
    expect(page.locator("li.alert")).to_have_count(2)
    expect(page.locator("#alert-count")).to_have_text("2")
    page.screenshot(path=screenshots / "alerts.png")
    page.locator(f"li.alert[data-id='{alerts[0]}']").get_by_text("Acknowledge").click()
    expect(page.locator("li.alert")).to_have_count(1)
    page.locator(f"li.alert[data-id='{alerts[1]}']").get_by_text("Dismiss").click()
    expect(page.locator("li.alert.empty, li.empty")).to_have_count(1)
    expect(page.locator("#alert-count")).to_be_hidden()
    statuses = page_daemon.sql("SELECT id::text, status FROM alerts WHERE id::text = any($1)",
                               alerts)
    assert {r["id"]: r["status"] for r in statuses} == {alerts[0]: "acknowledged",
                                                        alerts[1]: "dismissed"}
    actions = page_daemon.sql("SELECT action FROM audit_logs WHERE resource_type = 'alert'")
    assert sorted(r["action"] for r in actions) == ["alert_acknowledged", "alert_dismissed"]


def test_cameras_and_a_phone_in_dark_mode(
    browser: Any, page: Any, page_daemon: PageDaemon, screenshots: Path,
) -> None:
    add_camera(page_daemon, "drive", "Driveway")
    add_event(page_daemon, "drive", 35, hours_ago=0.3, summary="A person walks up the drive")
    page.goto(f"{page_daemon.base_url}/#/cameras")
    card = page.locator("li.camera[data-id='drive']")
    expect(card).to_contain_text("Driveway")
    expect(card).to_contain_text("latest event")
    expect(card.locator("img")).to_have_attribute("src", re.compile("^blob:"))
    assert card.locator("img").evaluate("img => img.complete && img.naturalWidth") > 0
    page.screenshot(path=screenshots / "cameras.png")

    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                is_mobile=True, has_touch=True, color_scheme="dark")
    phone.add_init_script(f"localStorage.setItem('hsid.apiKey', {API_KEY!r})")
    tab = phone.new_page()
    try:
        tab.goto(f"{page_daemon.base_url}/#/events?camera_id=drive")
        expect(tab.locator("li.event")).to_have_count(1)
        expect(tab.locator("li.event img.thumb")).to_have_attribute("src", re.compile("^blob:"))
        expect(tab.locator("#system")).to_contain_text("detector")
        assert tab.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 18, 22)"
        assert tab.evaluate("document.documentElement.scrollWidth") <= 390
        tab.screenshot(path=screenshots / "phone-dark-events.png")
        tab.locator("li.event a.body").click()
        expect(tab.locator("figure.annotated svg")).to_be_attached()
        expect(tab.locator("table.detections img")).to_have_attribute("src", re.compile("^blob:"))
        assert tab.evaluate("document.documentElement.scrollWidth") <= 390
        tab.screenshot(path=screenshots / "phone-dark-event.png", full_page=True)
    finally:
        phone.close()
