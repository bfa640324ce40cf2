// Isolation board: active switches, engage (pickers from the running config, dry run),
// release, extend ttl, and the acknowledgement grid of every instance.
import { api } from "./api.js";
import { ask } from "./confirm.js";
import { append, cell, clear, el, message, problemText, single, table } from "./dom.js";

let root, session, timers = [];
let targets = { scopes: [], modes: [], module: [], route: [], integration: [] };
const ui = {};

export function mount(node, s) {
  root = node;
  session = s;
  ui.switches = el("div", { id: "switches" });
  ui.grid = el("div", { id: "ack-grid" });
  ui.version = el("span", { id: "set-version" });
  ui.result = el("p", { id: "board-result", role: "status" });
  append(root, 
    el("h2", { text: "Active kill switches" }), ui.switches,
    session.can.act ? engageForm() : el("p", { class: "note", text: "Your role may look but not change switches." }),
    ui.result,
    el("h2", {}, "Acknowledgement grid ", ui.version),
    el("p", { class: "note", text: "Every instance heartbeating into the store: the switch-set version it enforces, how old its last heartbeat is, and whether it is enforcing, lagging or silent (no heartbeat for 3 periods)." }),
    ui.grid,
  );
}

export function start() {
  refresh();
  loadTargets();
  timers.push(setInterval(refreshGrid, 1000), setInterval(refreshSwitches, 3000));
}

export function stop() {
  timers.forEach(clearInterval);
  timers = [];
}

function refresh() {
  refreshSwitches();
  refreshGrid();
}

async function loadTargets() {
  try {
    targets = await api("GET", "/admin/killswitch/targets");
    if (ui.scope) fillScopes();
  } catch (error) {
    message(ui.result, `Could not load the running config's targets: ${problemText(error)}`, "error");
  }
}

// -- switches -------------------------------------------------------------------------------
const refreshSwitches = single(async () => {
  let data;
  try {
    data = await api("GET", "/admin/killswitch");
  } catch (error) {
    message(ui.switches, problemText(error), "error");
    return;
  }
  const rows = data.switches.map((s) => el("tr", { dataset: { switch: s.id, scope: s.scope, target: s.target } },
    cell(s.scope), cell(s.target), cell(s.mode), cell(s.incident), cell(s.expires_at || "no expiry"),
    cell(s.actor), cell(s.reason, { class: "reason" }),
    el("td", {}, session.can.act ? [
      el("button", { type: "button", class: "release", onclick: () => release(s) }, "Release"),
      " ",
      el("button", { type: "button", class: "extend", onclick: () => extend(s) }, "Extend ttl"),
    ] : [])));
  append(clear(ui.switches), rows.length
    ? table(["Scope", "Target", "Mode", "Incident", "Expires", "Actor", "Reason", ""], rows, { class: "switches" })
    : el("p", { class: "note", text: data.stale ? "No switches (store unreachable: this instance's set)" : "No active switches." }));
});

async function release(s) {
  const answer = await ask({ title: `Release ${s.scope} ${s.target}`, text: `Switch ${s.id}`,
    fields: [{ name: "reason", label: "Reason", required: true }] });
  if (!answer) return;
  try {
    const done = await api("DELETE", `/admin/killswitch/${encodeURIComponent(s.id)}`, { reason: answer.reason });
    message(ui.result, `Released ${done.id}; acknowledged by ${done.acknowledged.length}${lagText(done)}`, "ok");
  } catch (error) {
    message(ui.result, problemText(error), "error");
  }
  refresh();
}

async function extend(s) {
  const answer = await ask({ title: `Extend ${s.scope} ${s.target}`, text: "New expiry, counted from now (e.g. 30m, 2h).",
    fields: [{ name: "ttl", label: "ttl", value: "1h", required: true }, { name: "reason", label: "Reason", required: true }] });
  if (!answer) return;
  try {
    const done = await api("PATCH", `/admin/killswitch/${encodeURIComponent(s.id)}`, answer);
    message(ui.result, `Extended ${done.id} until ${done.expires_at}${lagText(done)}`, "ok");
  } catch (error) {
    message(ui.result, problemText(error), "error");
  }
  refresh();
}

function lagText(done) {
  return done.lagging && done.lagging.length ? `; NOT yet applied by ${done.lagging.join(", ")}` : "";
}

// -- engage -----------------------------------------------------------------------------------
function engageForm() {
  ui.scope = el("select", { id: "engage-scope", onchange: fillTargets });
  ui.targetBox = el("span", { id: "engage-target-box" });
  ui.mode = el("select", { id: "engage-mode" }, el("option", { value: "block", text: "block" }),
    el("option", { value: "read-only", text: "read-only" }));
  ui.ttl = el("input", { id: "engage-ttl", placeholder: "e.g. 2h (empty: none)", size: 10 });
  ui.incident = el("input", { id: "engage-incident", placeholder: "INC-…", size: 14 });
  ui.reason = el("input", { id: "engage-reason", placeholder: "why (required)", size: 30 });
  ui.dry = el("p", { id: "dryrun-result", role: "status" });
  const form = el("form", { id: "engage-form", class: "card", onsubmit: (e) => { e.preventDefault(); engage(); } },
    el("h3", { text: "Engage a switch" }),
    el("label", {}, "Scope ", ui.scope), el("label", {}, "Target ", ui.targetBox), el("label", {}, "Mode ", ui.mode),
    el("label", {}, "ttl ", ui.ttl), el("label", {}, "Incident ", ui.incident), el("label", {}, "Reason ", ui.reason),
    el("div", { class: "buttons" },
      el("button", { type: "button", id: "dry-run", onclick: dryRun }, "Dry run"),
      el("button", { type: "submit", id: "engage", class: "danger" }, "Engage")),
    ui.dry);
  fillScopes();
  return form;
}

function fillScopes() {
  const current = ui.scope.value || "module";
  append(clear(ui.scope), (targets.scopes.length ? targets.scopes : ["module"]).map(
    (s) => el("option", { value: s, text: s, selected: s === current })));
  fillTargets();
}

function fillTargets() {
  const scope = ui.scope.value;
  clear(ui.targetBox);
  if (scope === "global") {
    ui.target = null;
    ui.targetBox.append(el("span", { class: "note", text: "everything but health and ready" }));
  } else if (targets[scope]) {
    ui.target = el("select", { id: "engage-target" }, targets[scope].map((t) => el("option", { value: t, text: t })));
    ui.targetBox.append(ui.target);
  } else {
    const hint = scope === "endpoint" ? "POST /api/finance/*" : "tenant id";
    ui.target = el("input", { id: "engage-target", placeholder: hint, size: 24 });
    ui.targetBox.append(ui.target);
  }
}

function spec() {
  const body = { scope: ui.scope.value, mode: ui.mode.value, reason: ui.reason.value.trim() };
  if (ui.target) body.target = ui.target.value.trim();
  if (ui.ttl.value.trim()) body.ttl = ui.ttl.value.trim();
  if (ui.incident.value.trim()) body.incident = ui.incident.value.trim();
  return body;
}

async function dryRun() {
  const body = spec();
  if (!body.reason) body.reason = "dry run";
  try {
    const r = await api("POST", "/admin/killswitch?dry_run=true", body);
    message(ui.dry, `Would have refused ${r.would_refuse} of ${r.requests} requests in the last ${Math.round(r.window_s / 60)} minutes (this instance's counters). Nothing was engaged.`, "info");
  } catch (error) {
    message(ui.dry, problemText(error), "error");
  }
}

async function engage() {
  const body = spec();
  if (!body.reason) {
    message(ui.result, "A reason is required.", "error");
    return;
  }
  if (body.scope === "global") {
    // Destructive: everything behind the gateway stops. Reason again and a typed confirmation.
    const answer = await ask({ title: "Engage a GLOBAL kill switch", text: "Every request but health and ready will be refused on every instance.",
      fields: [{ name: "reason", label: "Reason", value: body.reason, required: true }], phrase: "isolate everything" });
    if (!answer) return;
    body.reason = answer.reason;
  }
  try {
    const done = await api("POST", "/admin/killswitch", body);
    message(ui.result, `Engaged ${done.id} (${done.scope} ${done.target}, ${done.mode}); acknowledged by ${done.acknowledged.length} instance(s)${lagText(done)}`, "ok");
    ui.reason.value = "";
  } catch (error) {
    message(ui.result, problemText(error), "error");
  }
  refresh();
}

// -- acknowledgement grid -----------------------------------------------------------------------
const refreshGrid = single(async () => {
  let data;
  try {
    data = await api("GET", "/admin/instances");
  } catch (error) {
    message(ui.grid, problemText(error), "error");
    return;
  }
  ui.version.textContent = `(store set version ${data.version})`;
  const rows = data.instances.map((i) => el("tr", { dataset: { instance: i.instance, state: i.state } },
    cell(i.instance), cell(i.version), cell(`${i.heartbeat_age_s.toFixed(1)} s`), cell(i.store),
    cell(i.state, { class: `state state-${i.state}` })));
  append(clear(ui.grid), rows.length
    ? table(["Instance", "Applied version", "Heartbeat age", "Store", "State"], rows, { class: "grid" })
    : el("p", { class: "note", text: "No instance heartbeats." }));
});
