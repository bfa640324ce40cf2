// Audit view: per-tenant chain verification (intact or broken, and the first bad record), and
// the tenant purge for gateway admins (destructive: reason and typed tenant id).
import { api } from "./api.js";
import { ask } from "./confirm.js";
import { append, clear, el, message, problemText } from "./dom.js";

const ui = {};

export function mount(root, session) {
  ui.tenant = el("input", { id: "audit-tenant", value: "_system", size: 20 });
  ui.verdict = el("div", { id: "audit-verdict", role: "status" });
  ui.purge = el("p", { id: "purge-result", role: "status" });
  append(root, 
    el("form", { class: "card", onsubmit: (e) => { e.preventDefault(); verify(); } },
      el("h2", { text: "Audit chain" }), el("label", {}, "Tenant ", ui.tenant), " ",
      el("button", { type: "submit", id: "audit-verify" }, "Verify")),
    ui.verdict,
    session.can.purge ? el("div", { class: "card" }, el("h3", { text: "Purge a tenant" }),
      el("p", { class: "note", text: "Deletes the tenant's stored gateway data (MFA secrets, recovery codes, grants, audit trail) leaving one tenant.purged record." }),
      el("button", { type: "button", class: "danger", id: "purge", onclick: purge }, "Purge tenant…"), ui.purge) : null,
  );
}

async function verify() {
  const tenant = ui.tenant.value.trim();
  try {
    const r = await api("GET", `/admin/audit/verify?tenant=${encodeURIComponent(tenant)}`);
    ui.verdict.className = r.ok ? "verdict intact" : "verdict broken";
    append(clear(ui.verdict), 
      el("strong", { text: r.ok ? "INTACT" : "BROKEN" }),
      ` ${r.tenant}: ${r.records} record(s) checked`,
      // first_bad_seq, anchors, signed_through: present once the trail carries signed anchors.
      r.problem ? el("div", { class: "problem",
        text: `First bad record: ${r.first_bad_seq != null ? `#${r.first_bad_seq} — ` : ""}${r.problem}` }) : null,
      r.anchors != null ? el("div", { class: "note",
        text: `${r.anchors} signed anchor(s) verified${r.signed_through ? `, signed through record ${r.signed_through}` : ""}` }) : null);
  } catch (error) {
    message(ui.verdict, problemText(error), "error");
  }
}

async function purge() {
  const tenant = ui.tenant.value.trim();
  if (!tenant || tenant === "_system") return message(ui.purge, "Name a tenant in the field above first.", "error");
  const answer = await ask({ title: `Purge tenant ${tenant}`, text: "This cannot be undone.",
    fields: [{ name: "reason", label: "Reason", required: true }], phrase: tenant });
  if (!answer) return;
  try {
    const r = await api("DELETE", `/admin/tenants/${encodeURIComponent(tenant)}`, { reason: answer.reason });
    message(ui.purge, `Purged ${r.tenant}; sessions revoked at ${r.sessions_revoked_at}`, "ok");
  } catch (error) {
    message(ui.purge, problemText(error), "error");
  }
}
