// Cameras: each one's latest snapshot, status, last upload and latest event.

import {image, request, withQuery} from "./api.js";
import {ago, clear, h, riskBadge, timeEl} from "./dom.js";

const REFRESH_MS = 30000;

function card(camera, latest) {
  const events = `#/events?camera_id=${encodeURIComponent(camera.id)}`;
  return h("li.camera", {dataset: {id: camera.id}},
    h("a.snapshot", {href: events},
      image(`/api/cameras/${encodeURIComponent(camera.id)}/snapshot`,
        {alt: `latest snapshot of ${camera.name}`, fresh: true})),
    h("div.body",
      h("div.line", h("strong", camera.name), h(`span.badge.camera-${camera.status}`, camera.status)),
      h("div.line.meta", "last upload ",
        camera.last_seen_at ? timeEl(camera.last_seen_at, ago(camera.last_seen_at)) : "never"),
      h("div.line.meta", latest
        ? [h("a", {href: `#/events/${latest.id}`}, "latest event"), " ",
          riskBadge(latest.risk_level, latest.risk_score), " ", timeEl(latest.started_at)]
        : "no events yet"),
      h("a.more", {href: events}, "events →")));
}

export function camerasView(main, _route, ctx) {
  const grid = h("ul.cameras");
  // Snapshots are fetched afresh each time, so their blob URLs are released with them.
  const release = () => {
    for (const img of grid.querySelectorAll("img[src^='blob:']")) URL.revokeObjectURL(img.src);
  };
  const note = h("p.count");
  main.append(h("section.panel", h("div.toolbar", h("h1", "Cameras")), note, grid));

  async function load() {
    try {
      const cameras = [...(await ctx.loadCameras()).values()];
      const latest = await Promise.all(cameras.map((camera) =>
        request(withQuery("/api/events", {camera_id: camera.id, limit: 1}))
          .then((page) => page.items[0]).catch(() => null)));
      note.textContent = cameras.length ? "" : "No cameras yet: make a folder per camera under the camera root.";
      release();
      clear(grid, cameras.map((camera, i) => card(camera, latest[i])));
    } catch (error) {
      note.textContent = `Could not load cameras: ${error.message}`;
    }
  }

  load();
  const timer = setInterval(load, REFRESH_MS);
  const listener = (message) => {
    if (["event", "reconnected"].includes(message.type)) load();
  };
  ctx.listeners.add(listener);
  return {destroy() {
    clearInterval(timer);
    release();
    ctx.listeners.delete(listener);
  }};
}
