// DOM building and formatting helpers for the review page: no framework, text is always text.

// Set as properties, so that a textarea's value or a checkbox's state is what shows.
const PROPERTIES = new Set(["value", "checked", "selected", "disabled", "hidden", "indeterminate"]);

/** An element: h("a.cls", {href: "#"}, "text", child), attributes optional. Strings become
 * text nodes, never HTML. */
export function h(tag, attrs, ...children) {
  if (!isAttributes(attrs)) {
    children.unshift(attrs);
    attrs = {};
  }
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name);
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (PROPERTIES.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function isAttributes(value) {
  return value !== null && typeof value === "object" && !(value instanceof Node)
    && !Array.isArray(value);
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element with attributes (presentation attributes are allowed by the page's CSP). */
export function svg(tag, attrs, ...children) {
  if (!isAttributes(attrs)) {
    children.unshift(attrs);
    attrs = {};
  }
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const TIME = new Intl.DateTimeFormat(undefined, {hour: "2-digit", minute: "2-digit", second: "2-digit"});
const DAY_TIME = new Intl.DateTimeFormat(undefined, {
  weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
});

/** "14:02:11" today, "Tue 3 Dec, 02:13" otherwise. */
export function when(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  const today = new Date();
  return moment.toDateString() === today.toDateString() ? TIME.format(moment) : DAY_TIME.format(moment);
}

/** "5 s ago", "3 min ago", "2 h ago", "4 d ago". */
export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

export function percent(value) {
  return value === null || value === undefined ? "—" : `${Math.round(value * 100)}%`;
}

/** A coloured risk badge: "high 72". */
export function riskBadge(level, score) {
  return h(`span.badge.risk-${level || "none"}`, {title: "risk score 0-100"},
    level || "unscored", score !== null && score !== undefined ? ` ${score}` : "");
}

/** A <time> element with the full date in its title. */
export function timeEl(iso, text = when(iso)) {
  return h("time", {datetime: iso || "", title: iso ? new Date(iso).toLocaleString() : ""}, text);
}

/** datetime-local input value <-> ISO-8601 in UTC (what the API takes). */
export function localInputToIso(value) {
  return value ? new Date(value).toISOString() : "";
}

export function isoToLocalInput(iso) {
  if (!iso) return "";
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return "";
  const local = new Date(moment.getTime() - moment.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

export function basename(path) {
  return path ? String(path).split(/[\\/]/).pop() : "";
}
