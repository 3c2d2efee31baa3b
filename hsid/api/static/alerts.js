// Alerts: open ones first; acknowledge or dismiss each; the count in the navigation.

import {request, withQuery} from "./api.js";
import {clear, h, timeEl} from "./dom.js";

// "open" is what still wants a person: raised, delivered or not, and not yet handled.
const OPEN = ["pending", "delivered"];
const FILTERS = {open: "open", acknowledged: "acknowledged", dismissed: "dismissed", all: "all"};
const PAGE = 100;

async function fetchAlerts(filter, extra = {}) {
  const statuses = filter === "open" ? OPEN : filter === "all" ? [""] : [filter];
  const pages = await Promise.all(statuses.map((status) =>
    request(withQuery("/api/alerts", {status, limit: PAGE, ...extra}))));
  const items = pages.flatMap((page) => page.items)
    .sort((a, b) => b.created_at.localeCompare(a.created_at));
  return {items, count: pages.reduce((sum, page) => sum + page.count, 0)};
}

/** Shows the number of open alerts beside "Alerts" in the navigation. */
export async function refreshAlertCount() {
  const badge = document.getElementById("alert-count");
  try {
    const {count} = await fetchAlerts("open", {limit: 1});
    badge.textContent = String(count);
    badge.hidden = count === 0;
  } catch (_) {
    badge.hidden = true;
  }
}

/** One alert with its actions; `changed(alert)` after a successful action. */
export function alertItem(alert, ctx, changed) {
  const meta = alert.metadata || {};
  const act = (action) => async (clicked) => {
    clicked.currentTarget.disabled = true;
    try {
      const updated = await request(`/api/alerts/${alert.id}/${action}`, {method: "POST"});
      ctx.toast(`Alert ${updated.status}`);
      refreshAlertCount();
      changed(updated);
    } catch (error) {
      ctx.toast(`Could not ${action} the alert: ${error.message}`, "error");
      clicked.currentTarget.disabled = false;
    }
  };
  const open = OPEN.includes(alert.status);
  return h(`li.alert.status-${alert.status}`, {dataset: {id: alert.id}},
    h("div.line",
      h(`span.badge.severity-${alert.severity}`, alert.severity),
      h("strong", meta.camera_name || ctx.cameraName(meta.camera_id) || "camera"),
      timeEl(alert.created_at),
      h("span.status", alert.status)),
    h("p.summary", meta.summary || "(no summary)"),
    h("div.line.meta",
      meta.rule_name ? h("span", `rule: ${meta.rule_name}`) : null,
      h("a", {href: `#/events/${alert.event_id}`}, `event #${alert.event_id}`),
      h("span.actions",
        open ? h("button", {type: "button", onclick: act("acknowledge")}, "Acknowledge") : null,
        alert.status !== "dismissed"
          ? h("button.secondary", {type: "button", onclick: act("dismiss")}, "Dismiss") : null)));
}

export function alertsView(main, {params}, ctx) {
  let filter = FILTERS[params.get("status")] || "open";
  const list = h("ul.alerts");
  const note = h("p.count");
  const select = h("select", {"aria-label": "alert status", onchange: () => {
    filter = select.value;
    history.replaceState(null, "", `#/alerts?status=${filter}`);
    load();
  }}, Object.keys(FILTERS).map((value) => h("option", {value, selected: value === filter}, value)));

  async function load() {
    try {
      const {items, count} = await fetchAlerts(filter);
      note.textContent = `${count} ${filter === "all" ? "" : filter + " "}alert${count === 1 ? "" : "s"}`;
      clear(list, items.map((alert) => alertItem(alert, ctx, load)));
      if (!items.length) list.append(h("li.empty", filter === "open" ? "Nothing waiting." : "None."));
    } catch (error) {
      note.textContent = `Could not load alerts: ${error.message}`;
    }
  }

  main.append(h("section.panel", h("div.toolbar", h("h1", "Alerts"), select), note, list));
  load();
  const listener = (message) => {
    if (message.type === "alert" || message.type === "reconnected") load();
  };
  ctx.listeners.add(listener);
  return {destroy: () => ctx.listeners.delete(listener)};
}
