// The review page's shell: routes, the live feed from /ws/events, the API-key prompt, toasts.

import {apiKey, onUnauthorized, request, setApiKey, subscribe} from "./api.js";
import {alertsView, refreshAlertCount} from "./alerts.js";
import {camerasView} from "./cameras.js";
import {clear, h} from "./dom.js";
import {eventsView, eventView} from "./events.js";
import {startSystemBar} from "./system.js";

// How many recent detections the live strip keeps, and how long a toast stays.
const LIVE_ITEMS = 12;
const TOAST_MS = 6000;

const main = document.getElementById("main");

/** What every view shares: cameras by id, the live feed, and a way to hear each message. */
const ctx = {
  cameras: new Map(),
  live: [],  // newest first: {camera_id, detected_at, captured_at, file_path, detections, event}
  listeners: new Set(),
  toast,
  cameraName(id) {
    return ctx.cameras.get(id)?.name || id;
  },
  async loadCameras() {
    const page = await request("/api/cameras?limit=1000");
    ctx.cameras = new Map(page.items.map((camera) => [camera.id, camera]));
    return ctx.cameras;
  },
  emit(message) {
    for (const listener of ctx.listeners) listener(message);
  },
};

function toast(text, kind = "info") {
  const item = h(`div.toast.${kind}`, {role: kind === "error" ? "alert" : "status"}, text);
  document.getElementById("toasts").append(item);
  setTimeout(() => item.remove(), TOAST_MS);
}

// ---- live messages ------------------------------------------------------------------------

async function onEvent(data) {
  // The message names the event; its detections say which live items it answers.
  let event;
  try {
    event = await request(`/api/events/${data.event_id ?? data.id}`);
  } catch (_) {
    return;
  }
  const ids = new Set(event.detection_ids || []);
  for (const item of ctx.live) {
    if (item.detections.some((d) => ids.has(d.id))) item.event = event;
  }
  ctx.emit({type: "live"});
}

function onMessage(message) {
  const data = message.data || {};
  if (message.type === "detection") {
    ctx.live.unshift({...data, received_at: new Date().toISOString(), event: null});
    ctx.live.length = Math.min(ctx.live.length, LIVE_ITEMS);
    if (!ctx.cameras.has(data.camera_id)) ctx.loadCameras().catch(() => {});
  } else if (message.type === "event") {
    onEvent(data);
  } else if (message.type === "alert") {
    toast(`Alert (${data.severity}) ${data.camera_name || data.camera_id}: ${data.summary || ""}`,
      "alert");
    refreshAlertCount();
  }
  ctx.emit(message);
}

function setLiveState(state) {
  const badge = document.getElementById("live");
  badge.textContent = {live: "live", connecting: "connecting…", reconnecting: "reconnecting…"}[state];
  badge.className = `live ${state}`;
  if (state === "live" && ctx.wasDown) ctx.emit({type: "reconnected"});  // catch up on misses
  ctx.wasDown = state !== "live";
}

// ---- the API-key prompt -------------------------------------------------------------------

const dialog = document.getElementById("key-dialog");

function askForKey(message) {
  const error = document.getElementById("key-error");
  error.hidden = !apiKey();
  error.textContent = apiKey() ? `The saved key was refused: ${message}` : "";
  if (!dialog.open) {
    dialog.showModal();
    document.getElementById("key-input").focus();
  }
}

document.getElementById("key-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  const input = document.getElementById("key-input");
  setApiKey(input.value.trim());
  input.value = "";
  dialog.close();
  showKeyButton();
  restart();
});

dialog.addEventListener("cancel", (cancelled) => cancelled.preventDefault());  // nothing works without it

function showKeyButton() {
  const button = document.getElementById("key-button");
  button.hidden = !apiKey();
}

document.getElementById("key-button").addEventListener("click", () => {
  if (confirm("Forget the API key saved in this browser?")) {
    setApiKey("");
    showKeyButton();
    restart();
  }
});

// ---- routing ------------------------------------------------------------------------------

const VIEWS = {events: eventsView, event: eventView, alerts: alertsView, cameras: camerasView};
let current = null;

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, id] = path.split("/");
  const view = name === "events" && id ? "event" : (VIEWS[name] ? name : "events");
  return {view, id, params: new URLSearchParams(query)};
}

function route() {
  const {view, id, params} = parseHash();
  if (current?.destroy) current.destroy();
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === (view === "event" ? "events" : view));
  }
  clear(main);
  main.dataset.view = view;
  current = VIEWS[view](main, {id, params}, ctx) || null;
  window.scrollTo(0, 0);
}

let events = null;
let system = null;

async function restart() {
  events?.restart();
  system?.refresh();
  refreshAlertCount();
  try {
    await ctx.loadCameras();
  } catch (_) { /* asked for a key, or the store is down: the views say so */ }
  route();
}

onUnauthorized(askForKey);
window.addEventListener("hashchange", route);
showKeyButton();
system = startSystemBar(document.getElementById("system"), ctx);
events = subscribe("/ws/events", onMessage, setLiveState);
restart();
