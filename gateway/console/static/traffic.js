// Traffic view: the last 15 minutes from the gateway's own ring (GET /admin/traffic, this
// process's counters): requests/s per route and status class, refusals by reason, the top
// refused clients (truncated IP, user pseudonym), what each shadow rate-limit policy would have
// refused (mode: shadow, never enforced), and active lockouts with clear.
import { api } from "./api.js";
import { ask } from "./confirm.js";
import { append, cell, clear, el, message, problemText, single, sparkline, table } from "./dom.js";

let session, timer = null;
const ui = {};
const CLASSES = ["2xx", "3xx", "4xx", "5xx"];

export function mount(root, s) {
  session = s;
  ui.routes = el("div", { id: "traffic-routes" });
  ui.refusals = el("div", { id: "traffic-refusals" });
  ui.clients = el("div", { id: "traffic-clients" });
  ui.shadow = el("div", { id: "traffic-shadow" });
  ui.lockouts = el("div", { id: "lockouts" });
  ui.result = el("p", { id: "lockout-result", role: "status" });
  ui.user = el("input", { id: "lockout-username", placeholder: "username", size: 20 });
  append(root, 
    el("h2", { text: "Requests per second, by route (last 15 minutes)" }), ui.routes,
    el("h2", { text: "Refusals by reason" }), ui.refusals,
    el("h2", { text: "Top refused clients" }), ui.clients,
    el("h2", { text: "Shadow limits: requests each shadow policy would have refused" }), ui.shadow,
    el("h2", { text: "Active lockouts" }), ui.lockouts,
    session.can.act ? el("form", { onsubmit: (e) => { e.preventDefault(); clearLockout("username", ui.user.value.trim()); } },
      el("label", {}, "Clear a username's lockout ", ui.user), " ", el("button", { type: "submit" }, "Clear")) : null,
    ui.result,
  );
}

export function start() {
  refresh();
  timer = setInterval(refresh, 5000);
}

export function stop() {
  clearInterval(timer);
  timer = null;
}

const refresh = single(async () => {
  try {
    render(await api("GET", "/admin/traffic"));
  } catch (error) {
    message(ui.routes, problemText(error), "error");
  }
  refreshLockouts();
});

function series(points, pick, seconds) {
  return points.map((p) => pick(p) / seconds);
}

// Every bucket of the window, oldest first, empty ones included: the charts' x axis is time.
function timeline(data) {
  const s = data.bucket_s;
  const last = data.now - (data.now % s);
  const byStart = new Map(data.points.map((p) => [p.t, p]));
  const all = [];
  for (let t = last - data.window_s + s; t <= last; t += s) all.push(byStart.get(t) || { t, routes: {}, refusals: {}, shadow: {} });
  return all;
}

function render(data) {
  const points = timeline(data);
  const s = data.bucket_s;
  const routes = [...new Set(points.flatMap((p) => Object.keys(p.routes)))].sort();
  const routeRows = routes.map((route) => {
    const sum = (cls) => points.reduce((n, p) => n + ((p.routes[route] || {})[cls] || 0), 0);
    const total = series(points, (p) => Object.values(p.routes[route] || {}).reduce((a, b) => a + b, 0), s);
    return el("tr", { dataset: { route } }, cell(route), CLASSES.map((c) => cell(sum(c))),
      el("td", {}, sparkline(total, { label: `${route} requests per second` })),
      cell(`${(total.at(-1) || 0).toFixed(2)}/s`));
  });
  append(clear(ui.routes), routeRows.length
    ? table(["Route", ...CLASSES, "req/s", "now"], routeRows, { class: "traffic" })
    : el("p", { class: "note", text: "No requests in the last 15 minutes." }));
  const slugs = [...new Set(points.flatMap((p) => Object.keys(p.refusals)))].sort();
  const refusalRows = slugs.map((slug) => el("tr", { dataset: { reason: slug } },
    cell(slug), cell(data.refusal_status[slug]), cell(points.reduce((n, p) => n + (p.refusals[slug] || 0), 0)),
    el("td", {}, sparkline(series(points, (p) => p.refusals[slug] || 0, s), { label: `${slug} per second` }))));
  append(clear(ui.refusals), refusalRows.length
    ? table(["Reason", "Status", "Total", "per second"], refusalRows, { class: "refusals" })
    : el("p", { class: "note", text: "No refusals." }));
  const clientRows = data.top_refused.map((c) => el("tr", {}, cell(c.client_ip), cell(c.user), cell(c.refusals)));
  append(clear(ui.clients), clientRows.length
    ? table(["Client (truncated IP)", "User (pseudonym)", "Refusals"], clientRows, { class: "clients" })
    : el("p", { class: "note", text: "None." }));
  // Every shadow policy of the running config (0 when it never fired), plus any counted under an
  // earlier config within the window.
  const policies = [...new Set([...(data.shadow_policies || []), ...Object.keys(data.shadow_refusals || {})])].sort();
  const shadowRows = policies.map((policy) => el("tr", { dataset: { policy } },
    cell(policy), cell((data.shadow_refusals || {})[policy] || 0),
    el("td", {}, sparkline(series(points, (p) => (p.shadow || {})[policy] || 0, s), { label: `${policy} would refuse per second` }))));
  append(clear(ui.shadow), shadowRows.length
    ? table(["Policy", "Would have refused (15 min)", "per second"], shadowRows, { class: "shadow" })
    : el("p", { class: "note", text: "No shadow rules in the running config." }));
}

async function refreshLockouts() {
  let data;
  try {
    data = await api("GET", "/admin/lockouts");
  } catch (error) {
    message(ui.lockouts, problemText(error), "error");
    return;
  }
  const rows = data.lockouts.map((l) => el("tr", {}, cell(l.kind), cell(l.subject), cell(`${l.retry_after} s`),
    el("td", {}, session.can.act && l.kind === "ip"
      ? el("button", { type: "button", onclick: () => clearLockout("ip", l.subject) }, "Clear") : null)));
  append(clear(ui.lockouts), rows.length
    ? table(["Kind", data.pseudonymized ? "Subject (truncated IP, user pseudonym)" : "Subject", "Remaining", ""],
      rows, { class: "lockouts" })
    : el("p", { class: "note", text: "No active lockouts." }),
  data.truncated ? el("p", { class: "note", text: `Showing the first ${rows.length}; more are locked.` }) : null);
}

async function clearLockout(kind, subject) {
  if (!subject) return;
  const answer = await ask({ title: `Clear the lockout of ${kind} ${subject}`, fields: [] });
  if (!answer) return;
  try {
    const r = await api("DELETE", `/admin/lockouts?${kind === "ip" ? "ip" : "username"}=${encodeURIComponent(subject)}`);
    message(ui.result, r.cleared ? `Cleared ${r.kind} ${r.subject}` : `${r.kind} ${r.subject} was not locked`, "ok");
  } catch (error) {
    message(ui.result, problemText(error), "error");
  }
  refreshLockouts();
}
