// Incident view: everything recorded under an incident id, the contain wizard (isolate, revoke
// sessions, rotate keys — each step's result shown, as `incident contain` prints them), and an
// export of the affected tenants' trails for the 72-hour account.
import { api, download } from "./api.js";
import { ask } from "./confirm.js";
import { append, cell, clear, el, message, problemText, table } from "./dom.js";

let session;
const ui = {};
let lastTenants = [];

export function mount(root, s) {
  session = s;
  ui.id = el("input", { id: "incident-id", placeholder: "INC-2026-001", size: 18 });
  ui.actions = el("div", { id: "incident-actions" });
  ui.exportBox = el("div", { id: "incident-export" });
  append(root, 
    el("form", { class: "card", onsubmit: (e) => { e.preventDefault(); lookup(); } },
      el("h2", { text: "Incident" }), el("label", {}, "Incident id ", ui.id), " ",
      el("button", { type: "submit", id: "incident-lookup" }, "Show")),
    ui.actions, ui.exportBox,
    session.can.act ? containForm() : el("p", { class: "note", text: "Your role may look but not contain." }),
    session.can.act ? rotateCard() : null,
  );
}

// Rotating alone (outside a contain): destructive, every token the gateway issued must be re-issued.
function rotateCard() {
  const result = el("p", { id: "rotate-result", role: "status" });
  const rotate = async () => {
    const incident = ui.id.value.trim();
    const answer = await ask({ title: "Rotate the gateway's signing keys",
      text: "Older keys are revoked at once: every token the gateway issued (MFA step-up tokens) stops working.",
      fields: [{ name: "reason", label: "Reason", required: true }], phrase: "rotate keys" });
    if (!answer) return;
    const body = { revoke_old: true, reason: answer.reason };
    if (incident) body.incident = incident;
    try {
      const r = await api("POST", "/admin/keys/rotate", body);
      message(result, `Rotated: new kid ${r.kid}; older keys revoked${r.incident ? ` (incident ${r.incident})` : ""}`, "ok");
    } catch (error) {
      message(result, problemText(error), "error");
    }
  };
  return el("div", { class: "card" }, el("h3", { text: "Signing keys" }),
    el("button", { type: "button", class: "danger", id: "rotate-keys", onclick: rotate }, "Rotate keys…"), result);
}

async function lookup() {
  const id = ui.id.value.trim();
  clear(ui.exportBox);
  if (!id) return;
  let data;
  try {
    data = await api("GET", `/admin/incidents/${encodeURIComponent(id)}`);
  } catch (error) {
    message(ui.actions, problemText(error), "error");
    return;
  }
  const rows = data.actions.map((a) => el("tr", {},
    cell(a.time), cell(a.event), cell(a.actor), cell(a.tenant), cell(JSON.stringify(a.details || {}), { class: "details" })));
  append(clear(ui.actions), 
    table(["Time", "Event", "Actor", "Trail", "Details"], rows, { class: "actions" }),
    data.truncated ? el("p", { class: "note", text: "Truncated: more actions exist than shown." }) : null);
  lastTenants = affectedTenants(data.actions);
  if (session.can.exportTrail) {
    ui.exportBox.append(el("p", {}, `Affected tenants: ${lastTenants.length ? lastTenants.join(", ") : "none"} `,
      lastTenants.length ? el("button", { type: "button", id: "export-trails", onclick: () => exportTrails(id) },
        "Export their trails (last 72 h)") : null));
  }
}

function affectedTenants(actions) {
  const found = new Set();
  for (const a of actions) {
    if (a.tenant && a.tenant !== "_system") found.add(a.tenant);
    const d = a.details || {};
    if (typeof d.tenant === "string") found.add(d.tenant);
    if (d.scope === "tenant" && typeof d.target === "string") found.add(d.target);
  }
  return [...found].sort();
}

async function exportTrails(id) {
  const since = Math.floor(Date.now() / 1000) - 72 * 3600;
  const status = el("p", { role: "status" });
  ui.exportBox.append(status);
  for (const tenant of lastTenants) {
    try {
      const blob = await download(`/admin/audit?tenant=${encodeURIComponent(tenant)}&format=json&since=${since}`);
      const link = el("a", { href: URL.createObjectURL(blob), download: `audit-${tenant}-${id}.json` });
      document.body.append(link);
      link.click();
      link.remove();
      status.append(el("span", { class: "ok", text: `${tenant}: exported. ` }));
    } catch (error) {
      status.append(el("span", { class: "error", text: `${tenant}: ${problemText(error)}. ` }));
    }
  }
}

// -- contain wizard -----------------------------------------------------------------------------
function containForm() {
  ui.cIncident = el("input", { id: "contain-incident", placeholder: "INC-…", size: 16 });
  ui.cScope = el("select", { id: "contain-scope" },
    ["tenant", "module", "route", "integration", "endpoint", "global", "none"].map((s) => el("option", { value: s, text: s })));
  ui.cTarget = el("input", { id: "contain-target", placeholder: "target (a tenant for scope tenant)", size: 24 });
  ui.cTenant = el("input", { id: "contain-tenant", placeholder: "tenant whose sessions end", size: 16 });
  ui.cSessions = el("input", { id: "contain-sessions", type: "checkbox", checked: true });
  ui.cKeys = el("input", { id: "contain-keys", type: "checkbox" });
  ui.cTtl = el("input", { id: "contain-ttl", placeholder: "ttl (optional)", size: 8 });
  ui.steps = el("ol", { id: "contain-steps" });
  return el("form", { id: "contain-form", class: "card", onsubmit: (e) => { e.preventDefault(); contain(); } },
    el("h3", { text: "Contain" }),
    el("p", { class: "note", text: "Isolate, revoke the tenant's sessions, rotate the signing keys: one step after the other, each tagged with the incident id, stopping at the first failure." }),
    el("label", {}, "Incident ", ui.cIncident), el("label", {}, "Isolate scope ", ui.cScope), el("label", {}, "Target ", ui.cTarget),
    el("label", {}, "ttl ", ui.cTtl), el("label", {}, "Tenant ", ui.cTenant),
    el("label", {}, ui.cSessions, " revoke the tenant's sessions"), el("label", {}, ui.cKeys, " rotate signing keys (revoke old)"),
    el("div", { class: "buttons" }, el("button", { type: "submit", class: "danger", id: "contain" }, "Contain…")),
    ui.steps);
}

async function contain() {
  const incident = ui.cIncident.value.trim();
  if (!incident) return message(ui.steps, "An incident id is required.", "error");
  const answer = await ask({ title: `Contain ${incident}`, text: "Destructive: isolates, ends sessions, rotates keys as selected.",
    fields: [{ name: "reason", label: "Reason", required: true }], phrase: incident });
  if (!answer) return;
  const steps = [];
  const scope = ui.cScope.value;
  const tenant = ui.cTenant.value.trim();
  if (scope !== "none") {
    const body = { scope, mode: "block", reason: answer.reason, incident };
    const target = ui.cTarget.value.trim() || (scope === "tenant" ? tenant : "");
    if (scope !== "global") body.target = target;
    if (ui.cTtl.value.trim()) body.ttl = ui.cTtl.value.trim();
    steps.push(["kill switch", "POST", "/admin/killswitch", body,
      (d) => `engaged ${d.id} (${d.scope} ${d.target}); acknowledged by ${d.acknowledged.length}${d.lagging.length ? `; NOT yet applied by ${d.lagging.join(", ")}` : ""}`]);
  }
  if (ui.cSessions.checked) {
    steps.push(["session revocation", "POST", "/admin/sessions/revoke", { tenant, incident, reason: answer.reason },
      (d) => `revoked sessions of ${d.tenant} issued at or before ${d.revoked_at}`]);
  }
  if (ui.cKeys.checked) {
    steps.push(["key rotation", "POST", "/admin/keys/rotate", { revoke_old: true, incident, reason: answer.reason },
      (d) => `rotated signing keys; older keys revoked (new kid ${d.kid})`]);
  }
  clear(ui.steps).className = "";
  let failed = false;
  for (const [label, method, path, body, said] of steps) {
    const item = el("li", { dataset: { step: label } }, `${label}: `);
    ui.steps.append(item);
    if (failed) {
      item.append(el("span", { class: "note", text: "not run" }));
      continue;
    }
    try {
      item.append(el("span", { class: "ok", text: said(await api(method, path, body)) }));
    } catch (error) {
      failed = true;
      item.append(el("span", { class: "error", text: `FAILED: ${problemText(error)}` }));
    }
  }
  ui.id.value = incident;
  lookup();
}
