// The system bar: health, queue depth, detector provider, LLM model, events left to review.

import {request} from "./api.js";
import {basename, clear, h} from "./dom.js";

const REFRESH_MS = 10000;
const PROVIDERS = {
  TensorrtExecutionProvider: "TensorRT",
  CUDAExecutionProvider: "CUDA",
  CPUExecutionProvider: "CPU",
};

function item(label, value, {title = "", kind = ""} = {}) {
  return h(`span.item${kind ? "." + kind : ""}`, {title}, h("span.label", label), " ", value);
}

function healthItem(health) {
  if (!health) return item("health", "unreachable", {kind: "bad"});
  const trouble = [];
  for (const store of ["database", "redis"]) {
    if (health[store]?.status !== "up") trouble.push(`${store} down`);
  }
  for (const [name, stage] of Object.entries(health.stages || {})) {
    if (!["running", "stopped"].includes(stage.state)) trouble.push(`${name} ${stage.state}`);
  }
  const ok = health.status === "healthy";
  return item("", h("span", h(`span.dot.${ok ? "ok" : "bad"}`), ok ? "healthy" : "unhealthy"),
    {title: trouble.join(", ") || "database, Redis and every stage are running",
      kind: ok ? "" : "bad"});
}

function render(el, health, stats) {
  const parts = [healthItem(health)];
  if (stats) {
    const queues = Object.entries(stats.queues || {})
      .map(([name, depth]) => `${name.replace(/_queue$/, "")} ${depth}`).join(" · ");
    parts.push(item("queue", queues || "—", {title: "items waiting per queue"}));
    const dead = Object.values(stats.dlq || {}).reduce((sum, n) => sum + n, 0);
    if (dead) parts.push(item("dead letters", String(dead), {kind: "bad",
      title: "failed jobs: hsid dlq list"}));
    const detector = stats.detector;
    parts.push(item("detector", detector ? (PROVIDERS[detector.provider] || detector.provider) : "—",
      {title: detector ? `${detector.provider}, ${detector.model}` : "no detect stage here"}));
    const analyzer = stats.info?.analyzer;
    const llm = !analyzer ? "—" : analyzer.mode === "llm" ? basename(analyzer.model)
      : "none, rules";
    parts.push(item("LLM", llm, {title: analyzer?.reason || analyzer?.model || "",
      kind: analyzer && analyzer.mode !== "llm" ? "warn" : ""}));
    const unreviewed = stats.counts?.unreviewed_events;
    if (unreviewed !== undefined) parts.push(item("to review", String(unreviewed)));
  }
  clear(el, parts);
}

/** Fills `el` now and every REFRESH_MS; returns {refresh}. */
export function startSystemBar(el, ctx) {
  const refresh = async () => {
    // Health is open to all; the rest needs the key (a 401 asks for it once).
    const [health, stats] = await Promise.all([
      fetch("/api/system/health").then((r) => r.json()).catch(() => null),
      request("/api/system/stats").catch(() => null),
    ]);
    render(el, health, stats);
  };
  refresh();
  setInterval(refresh, REFRESH_MS);
  ctx.listeners.add((message) => {
    if (message.type === "event") refresh();
  });
  return {refresh};
}
