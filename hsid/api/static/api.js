// The page's only way to the daemon: JSON calls, images and WebSockets, with the API key.
//
// The key lives in localStorage (this browser only) and goes in the X-API-Key header; images
// are fetched with it too and shown as blob: URLs, so the key never lands in a URL, a log
// line or the browser history. Only the WebSocket takes it as ?api_key=, as browsers cannot
// set headers there.

const KEY_STORAGE = "hsid.apiKey";
// Thumbnails never change for a detection id, so they are kept for the page's life, up to this
// many (the oldest blob URL is released first).
const IMAGE_CACHE_SIZE = 400;
const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 15000;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let unauthorized = () => {};

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  releaseImages();
}

/** Called with the server's message whenever a call is refused for its key (401). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

async function failure(response) {
  let code = "http_" + response.status, message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) ({code, message} = body.error);
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, code, message);
}

/** fetch() with the key; the Response when it is OK, else an ApiError (401 also asks for a key). */
export async function send(path, {method = "GET", body} = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.ok) return response;
  const error = await failure(response);
  // A refusal of a key that has been replaced meanwhile is old news: don't ask again.
  if (response.status === 401 && key === apiKey()) unauthorized(error.message);
  throw error;
}

/** A JSON call: the parsed body (null for 204). */
export async function request(path, options = {}) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

/** A path with a query string from an object, leaving out empty values. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

const images = new Map();  // path -> Promise<blob URL | null>, oldest first

function releaseImages() {
  for (const pending of images.values()) pending.then((url) => url && URL.revokeObjectURL(url));
  images.clear();
}

/** A blob: URL for an image behind the API (null when it is missing), cached unless `fresh`. */
export function imageUrl(path, {fresh = false} = {}) {
  if (!fresh && images.has(path)) return images.get(path);
  const pending = send(path)
    .then((response) => response.blob())
    .then((blob) => URL.createObjectURL(blob))
    .catch(() => null);
  if (!fresh) {
    images.set(path, pending);
    if (images.size > IMAGE_CACHE_SIZE) {
      const [oldest] = images.keys();
      images.get(oldest).then((url) => url && URL.revokeObjectURL(url));
      images.delete(oldest);
    }
  }
  return pending;
}

/** An <img> filled in once its image arrives; marked `missing` when there is none. */
export function image(path, {alt = "", className = "", fresh = false} = {}) {
  const img = document.createElement("img");
  img.alt = "";  // until it arrives: a box, not a broken-image icon with its alt text
  img.className = `${className} loading`.trim();
  img.decoding = "async";
  imageUrl(path, {fresh}).then((url) => {
    img.classList.remove("loading");
    if (url) {
      img.src = url;
      img.alt = alt;
    } else {
      img.classList.add("missing");
    }
  });
  return img;
}

/**
 * A WebSocket to `path` that reconnects with backoff. `onMessage` gets each parsed message,
 * `onState` "connecting" | "live" | "reconnecting". Returns {close, restart}.
 */
export function subscribe(path, onMessage, onState) {
  let socket = null, delay = RECONNECT_FIRST_MS, stopped = false, timer = null;
  const open = () => {
    const url = new URL(path, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const key = apiKey();
    if (key) url.searchParams.set("api_key", key);
    onState("connecting");
    const ws = new WebSocket(url);
    socket = ws;
    ws.onopen = () => {
      delay = RECONNECT_FIRST_MS;
      onState("live");
    };
    ws.onmessage = (message) => {
      let body;
      try {
        body = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      onMessage(body);
    };
    ws.onclose = () => {
      if (socket !== ws || stopped) return;
      onState("reconnecting");
      timer = setTimeout(open, delay);
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    };
  };
  open();
  return {
    close() {
      stopped = true;
      clearTimeout(timer);
      socket?.close();
    },
    restart() {
      clearTimeout(timer);
      const old = socket;
      socket = null;
      old?.close();
      delay = RECONNECT_FIRST_MS;
      open();
    },
  };
}
