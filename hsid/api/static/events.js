// Events: the live strip, the filtered list with bulk review, and one event in detail.

import {image, imageUrl, request, withQuery} from "./api.js";
import {alertItem} from "./alerts.js";
import {
  clear, h, isoToLocalInput, localInputToIso, percent, riskBadge, svg, timeEl, when,
} from "./dom.js";

const PAGE = 50;
const FRESH_MS = 10000;
const RISK_LEVELS = ["low", "medium", "high", "critical"];
const FILTER_NAMES = ["camera_id", "risk_level", "reviewed", "start", "end"];
// Box colours by object class on the annotated snapshot; others get the last one.
const CLASS_COLOURS = {person: "#ef4444", car: "#3b82f6", truck: "#3b82f6", bus: "#3b82f6",
  motorcycle: "#3b82f6", bicycle: "#06b6d4", dog: "#22c55e", cat: "#22c55e", bird: "#22c55e",
  other: "#f59e0b"};

function thumbnail(event, ctx) {
  const first = event.detection_ids?.[0];
  if (!first) return h("span.thumb.empty", "—");
  return image(`/api/detections/${first}/thumbnail`,
    {alt: `${ctx.cameraName(event.camera_id)} thumbnail`, className: "thumb"});
}

function eventRow(event, ctx, selected, onSelect, fresh) {
  const href = `#/events/${event.id}`;
  return h(`li.event${event.reviewed ? ".reviewed" : ""}${fresh ? ".fresh" : ""}`,
    {dataset: {id: event.id}},
    h("input", {type: "checkbox", "aria-label": `select event ${event.id}`,
      checked: selected.has(event.id), onchange: (e) => onSelect(event.id, e.target.checked)}),
    h("a.thumb-link", {href, tabindex: "-1"}, thumbnail(event, ctx)),
    h("a.body", {href},
      h("div.line", riskBadge(event.risk_level, event.risk_score),
        h("strong", ctx.cameraName(event.camera_id)), timeEl(event.started_at),
        event.is_fast_path ? h("span.tag", {title: "analysed at once"}, "fast") : null),
      h("p.summary", event.summary || "(no summary)"),
      event.notes ? h("p.notes", `Note: ${event.notes}`) : null),
    h("span.state", event.reviewed ? "✓ reviewed" : "new"));
}

function liveItem(item, ctx) {
  const kinds = item.detections.map((d) => `${d.object_type} ${percent(d.confidence)}`).join(", ");
  const first = item.detections[0];
  const status = item.event
    ? h("a.status", {href: `#/events/${item.event.id}`}, `event #${item.event.id} `,
      riskBadge(item.event.risk_level, item.event.risk_score))
    : h("span.status.pending", "analysing…");
  return h(`li.live-item${item.event ? ".done" : ""}`, {dataset: {camera: item.camera_id}},
    first ? image(`/api/detections/${first.id}/thumbnail`, {alt: kinds, className: "thumb"})
      : h("span.thumb.empty"),
    h("div.body",
      h("div.line", h("strong", ctx.cameraName(item.camera_id)),
        timeEl(item.captured_at || item.detected_at)),
      h("div.kinds", kinds || "nothing"),
      status));
}

function filtersFrom(params) {
  const filters = {};
  for (const name of FILTER_NAMES) filters[name] = params.get(name) || "";
  return filters;
}

function matches(filters, event) {
  return (!filters.camera_id || filters.camera_id === event.camera_id)
    && (!filters.risk_level || filters.risk_level === event.risk_level)
    && filters.reviewed !== "true";
}

export function eventsView(main, {params}, ctx) {
  const filters = filtersFrom(params);
  const selected = new Set();
  let items = [], total = 0, fresh = new Set(), loading = 0;

  const liveList = h("ul.live-list");
  const liveSection = h("section.live-strip", {"aria-label": "live"}, h("h2", "Live"), liveList);
  const list = h("ul.events");
  const count = h("p.count");
  const more = h("button.secondary.more", {type: "button", hidden: true, onclick: () => load(true)},
    "Load more");
  const note = h("input", {type: "text", placeholder: "Note (optional)", "aria-label": "review note",
    maxlength: "10000"});
  const selectAll = h("input", {type: "checkbox", "aria-label": "select all",
    onchange: () => {
      for (const event of items) {
        if (selectAll.checked) selected.add(event.id); else selected.delete(event.id);
      }
      renderList();
    }});
  const selectedCount = h("span.selected-count");
  const reviewButton = h("button", {type: "button", disabled: true, onclick: () => review(true)},
    "Mark reviewed");
  const unreviewButton = h("button.secondary", {type: "button", disabled: true,
    onclick: () => review(false)},
    "Mark unreviewed");

  const cameraSelect = h("select", {name: "camera_id", "aria-label": "camera"});
  const fillCameras = () => clear(cameraSelect, h("option", {value: ""}, "All cameras"),
    [...ctx.cameras.values()].map((camera) =>
      h("option", {value: camera.id, selected: camera.id === filters.camera_id}, camera.name)));
  fillCameras();
  const form = h("form.filters", {onchange: applyFilters, onsubmit: (e) => e.preventDefault()},
    cameraSelect,
    h("select", {name: "risk_level", "aria-label": "risk level"},
      h("option", {value: ""}, "Any risk"),
      RISK_LEVELS.map((level) => h("option", {value: level, selected: level === filters.risk_level},
        level))),
    h("select", {name: "reviewed", "aria-label": "reviewed"},
      h("option", {value: ""}, "Reviewed or not"),
      h("option", {value: "false", selected: filters.reviewed === "false"}, "Not reviewed"),
      h("option", {value: "true", selected: filters.reviewed === "true"}, "Reviewed")),
    h("label", "From ", h("input", {type: "datetime-local", name: "start",
      value: isoToLocalInput(filters.start)})),
    h("label", "To ", h("input", {type: "datetime-local", name: "end",
      value: isoToLocalInput(filters.end)})),
    h("button.secondary", {type: "button", onclick: () => {
      form.reset();
      for (const select of form.querySelectorAll("select")) select.value = "";
      for (const input of form.querySelectorAll("input")) input.value = "";
      applyFilters();
    }}, "Clear"));

  main.append(
    liveSection,
    h("section.panel",
      h("div.toolbar", h("h1", "Events"), count),
      form,
      h("div.bulk", h("label.select-all", selectAll, " all"), selectedCount, note, reviewButton,
        unreviewButton),
      list, more));

  function applyFilters() {
    const data = new FormData(form);
    for (const name of FILTER_NAMES) {
      const value = String(data.get(name) || "");
      filters[name] = name === "start" || name === "end" ? localInputToIso(value) : value;
    }
    history.replaceState(null, "", withQuery("#/events", filters));
    selected.clear();
    load();
  }

  function renderList() {
    clear(list, items.map((event) => eventRow(event, ctx, selected, select, fresh.has(event.id))));
    if (!items.length) list.append(h("li.empty", "No events match."));
    const shown = [...selected].filter((id) => items.some((event) => event.id === id)).length;
    selectedCount.textContent = shown ? `${shown} selected` : "";
    reviewButton.disabled = unreviewButton.disabled = shown === 0;
    selectAll.checked = shown > 0 && shown === items.length;
    selectAll.indeterminate = shown > 0 && shown < items.length;
    count.textContent = `${total} event${total === 1 ? "" : "s"}`;
    more.hidden = items.length >= total;
  }

  function select(id, on) {
    if (on) selected.add(id); else selected.delete(id);
    renderList();
  }

  function renderLive() {
    liveSection.hidden = ctx.live.length === 0;
    clear(liveList, ctx.live.map((item) => liveItem(item, ctx)));
  }

  async function load(append = false) {
    const ticket = ++loading;  // a slow answer to an older filter must not win
    const offset = append ? items.length : 0;
    const limit = append ? PAGE : Math.max(PAGE, Math.min(items.length, 1000));
    try {
      const page = await request(withQuery("/api/events", {...filters, limit, offset}));
      if (ticket !== loading) return;
      items = append ? items.concat(page.items) : page.items;
      total = page.count;
      renderList();
    } catch (error) {
      if (ticket === loading) count.textContent = `Could not load events: ${error.message}`;
    }
  }

  async function review(reviewed) {
    const ids = [...selected].filter((id) => items.some((event) => event.id === id));
    const body = {ids, reviewed};
    if (note.value.trim()) body.notes = note.value.trim();
    reviewButton.disabled = unreviewButton.disabled = true;
    try {
      const result = await request("/api/events/review", {method: "POST", body});
      const n = result.updated.length;
      ctx.toast(`${n} event${n === 1 ? "" : "s"} marked ${reviewed ? "reviewed" : "unreviewed"}`);
      selected.clear();
      note.value = "";
      fresh = new Set();
      await load();
    } catch (error) {
      ctx.toast(`Review failed: ${error.message}`, "error");
      renderList();
    }
  }

  const listener = (message) => {
    if (message.type === "detection" || message.type === "live") renderLive();
    if (message.type === "event" && matches(filters, message.data || {})) {
      const id = message.data.event_id ?? message.data.id;
      fresh = new Set([id]);  // highlighted when it arrives, not at every later redraw
      setTimeout(() => fresh.delete(id), FRESH_MS);
      load();
    }
    if (message.type === "reconnected") load();
    if (message.type === "detection" && !cameraSelect.querySelector(
      `option[value="${CSS.escape(message.data?.camera_id || "")}"]`)) {
      ctx.loadCameras().then(fillCameras).catch(() => {});
    }
  };
  ctx.listeners.add(listener);
  renderLive();
  count.textContent = "loading…";
  load();
  return {destroy: () => ctx.listeners.delete(listener)};
}

// ---- one event ----------------------------------------------------------------------------

/** The zones holding a box's bottom centre (where a person or car stands), as the daemon
 * decides it (hsid/cameras/zones.py). */
function zonesOf(detection, zones, width, height) {
  const x = (detection.bbox_x + detection.bbox_width / 2) / Math.max(width, 1);
  const y = (detection.bbox_y + detection.bbox_height) / Math.max(height, 1);
  return zones.filter((zone) => zone.enabled && contains(zone, x, y));
}

function contains(zone, x, y) {
  const points = zone.coordinates || [];
  if (zone.shape === "rectangle" && points.length === 2) {
    const [[x0, y0], [x1, y1]] = points;
    return Math.min(x0, x1) <= x && x <= Math.max(x0, x1) && Math.min(y0, y1) <= y && y <= Math.max(y0, y1);
  }
  let inside = false;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    const [xa, ya] = points[i], [xb, yb] = points[j];
    if ((ya > y) !== (yb > y) && x < xa + (y - ya) * (xb - xa) / (yb - ya)) inside = !inside;
  }
  return inside;
}

function zonePoints(zone, width, height) {
  let points = zone.coordinates || [];
  if (zone.shape === "rectangle" && points.length === 2) {
    const [[x0, y0], [x1, y1]] = points;
    points = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
  }
  return points.map(([x, y]) => `${x * width},${y * height}`).join(" ");
}

/** An image with the detections' boxes (where given) and the camera's zones drawn over it. */
function annotatedImage(url, detections, zones, onSize, alt = "") {
  const img = h("img", {alt: alt || `snapshot with ${detections.length} detection(s) marked`});
  const figure = h("figure.annotated", img);
  img.addEventListener("load", () => {
    const width = img.naturalWidth, height = img.naturalHeight;
    const stroke = Math.max(2, width / 320);
    const overlay = svg("svg", {viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
      "aria-hidden": "true"});
    for (const zone of zones.filter((z) => z.enabled)) {
      overlay.append(svg("polygon", {points: zonePoints(zone, width, height), fill: zone.color,
        "fill-opacity": "0.15", stroke: zone.color, "stroke-width": stroke,
        "stroke-dasharray": `${stroke * 4} ${stroke * 2}`}));
    }
    for (const d of detections) {
      const colour = CLASS_COLOURS[d.object_type] || CLASS_COLOURS.other;
      const size = Math.max(14, width / 60);
      overlay.append(
        svg("rect", {x: d.bbox_x, y: d.bbox_y, width: d.bbox_width, height: d.bbox_height,
          fill: "none", stroke: colour, "stroke-width": stroke}),
        svg("rect", {x: d.bbox_x, y: Math.max(0, d.bbox_y - size * 1.4), width: size * 7,
          height: size * 1.4, fill: colour}),
        svg("text", {x: d.bbox_x + size * 0.3, y: Math.max(size * 1.1, d.bbox_y - size * 0.35),
          fill: "#fff", "font-size": size, "font-family": "system-ui, sans-serif"},
        `${d.object_type} ${percent(d.confidence)}`));
    }
    figure.append(overlay);
    onSize(width, height);
  });
  img.src = url;
  return figure;
}

async function snapshotFigures(event, zones, onSizes) {
  // The daemon's own annotated snapshot of the event, where it has one.
  // Its boxes are drawn already; the zones are drawn here. A camera's images share one size,
  // so this one's size places every detection of the event in its zones.
  const snapshot = await imageUrl(`/api/events/${event.id}/snapshot`);
  if (snapshot) {
    return [annotatedImage(snapshot, [], zones,
      (width, height) => onSizes(event.detections, width, height), "annotated snapshot")];
  }
  // Otherwise each source image of the event, boxes drawn here.
  const byFile = new Map();
  for (const d of event.detections) {
    if (!byFile.has(d.file_path)) byFile.set(d.file_path, []);
    byFile.get(d.file_path).push(d);
  }
  const figures = [];
  for (const detections of byFile.values()) {
    const url = await imageUrl(`/api/detections/${detections[0].id}/image`);
    if (url) {
      figures.push(annotatedImage(url, detections, zones,
        (width, height) => onSizes(detections, width, height)));
    }
  }
  if (!figures.length) {
    onSizes(null);
    figures.push(h("p.muted", "The snapshot is no longer stored; the thumbnails below remain."));
  }
  return figures;
}

function swatch(colour) {
  const chip = h("span.swatch", {title: colour});
  chip.style.background = colour;  // CSSOM, which the page's CSP allows (inline styles it does not)
  return chip;
}

function reviewPanel(event, ctx, update) {
  const notes = h("textarea", {rows: 3, maxlength: "10000", "aria-label": "notes",
    placeholder: "What was it? (kept with the event)", value: event.notes || ""});
  const save = async (body, done) => {
    try {
      const updated = await request(`/api/events/${event.id}`, {method: "PATCH", body});
      ctx.toast(done);
      update(updated);
    } catch (error) {
      ctx.toast(`Could not save: ${error.message}`, "error");
    }
  };
  return h("section.review",
    h("h2", "Review"),
    h("p.state", event.reviewed ? "✓ Reviewed" : "Not reviewed yet"),
    notes,
    h("div.actions",
      h("button", {type: "button", onclick: () => save(
        {reviewed: !event.reviewed, notes: notes.value.trim() || null},
        `Event ${event.id} marked ${event.reviewed ? "unreviewed" : "reviewed"}`)},
      event.reviewed ? "Mark unreviewed" : "Mark reviewed"),
      h("button.secondary", {type: "button", onclick: () => save(
        {notes: notes.value.trim() || null}, "Note saved")}, "Save note")));
}

export function eventView(main, {id}, ctx) {
  const section = h("section.panel.detail", h("p.muted", "loading…"));
  main.append(h("a.back", {href: "#/events"}, "← Events"), section);
  let alive = true;

  async function render() {
    let event, zones = [], alerts = [];
    try {
      event = await request(`/api/events/${encodeURIComponent(id)}`);
      [zones, alerts] = await Promise.all([
        request(`/api/cameras/${encodeURIComponent(event.camera_id)}/zones?limit=1000`)
          .then((page) => page.items).catch(() => []),
        request(withQuery("/api/alerts", {event_id: event.id, limit: 100}))
          .then((page) => page.items).catch(() => []),
      ]);
    } catch (error) {
      clear(section, h("p.error", `Could not load event ${id}: ${error.message}`));
      return;
    }
    if (!alive) return;
    const zoneCells = new Map(event.detections.map((d) => [d.id, h("td.zones", "…")]));
    const inZone = new Set();
    const zoneList = h("ul.zone-list");
    const renderZones = () => clear(zoneList, zones.length ? zones.map((zone) =>
      h("li", swatch(zone.color), ` ${zone.name} `,
        h("span.muted", zone.zone_type.replace("_", " ")),
        !zone.enabled ? h("span.tag", "off") : null,
        inZone.has(zone.id) ? h("span.tag.hit", "detection inside") : null))
      : h("li.muted", "No zones drawn for this camera."));
    const onSizes = (detections, width, height) => {
      for (const d of detections || event.detections) {
        const found = detections ? zonesOf(d, zones, width, height) : null;
        found?.forEach((zone) => inZone.add(zone.id));
        clear(zoneCells.get(d.id), found ? (found.map((z) => z.name).join(", ") || "none") : "—");
      }
      renderZones();
    };
    const figures = h("div.figures", h("p.muted", "loading the snapshot…"));
    clear(section,
      h("div.line.title", riskBadge(event.risk_level, event.risk_score),
        h("h1", ctx.cameraName(event.camera_id)),
        timeEl(event.started_at),
        event.ended_at && event.ended_at !== event.started_at
          ? h("span.muted", `to ${when(event.ended_at)}`) : null,
        event.is_fast_path ? h("span.tag", "fast path") : null,
        h("span.muted", `event #${event.id}`)),
      figures,
      h("div.columns",
        h("div",
          h("h2", "Summary"), h("p.summary", event.summary || "(no summary)"),
          h("h2", "Reasoning"), h("p.reasoning", event.reasoning || "(none)"),
          h("h2", `Detections (${event.detections.length})`),
          h("table.detections",
            h("thead", h("tr", h("th", ""), h("th", "object"), h("th", "confidence"),
              h("th", "taken"), h("th", "zones"))),
            h("tbody", event.detections.map((d) => h("tr",
              h("td", image(`/api/detections/${d.id}/thumbnail`,
                {alt: d.object_type, className: "thumb small"})),
              h("td", d.object_type), h("td", percent(d.confidence)),
              h("td", timeEl(d.captured_at || d.detected_at)), zoneCells.get(d.id))))),
          h("h2", "Zones"), zoneList),
        h("div",
          reviewPanel(event, ctx, (updated) => {
            Object.assign(event, updated);
            render();
          }),
          alerts.length ? h("section", h("h2", "Alerts"),
            h("ul.alerts", alerts.map((alert) => alertItem(alert, ctx, render)))) : null)));
    renderZones();
    const shown = await snapshotFigures(event, zones, onSizes);
    if (alive) clear(figures, shown);
  }

  render();
  const listener = (message) => {
    if (message.type === "reconnected") render();
  };
  ctx.listeners.add(listener);
  return {destroy() {
    alive = false;
    ctx.listeners.delete(listener);
  }};
}
