// The console shell: sign-in, roles, tabs. Each view module exports mount(root, session) and
// optionally refresh() / stop(); only the visible view polls.
import { api, ApiError, setToken, token } from "./api.js";
import * as audit from "./audit.js";
import * as board from "./board.js";
import * as incident from "./incident.js";
import * as traffic from "./traffic.js";

const VIEWS = { board, incident, traffic, audit };
const NOTICE = "shopino-gateway-console-notice";
const session = { actor: null, roles: [], can: {} };
let active = null;

// What the role matrix (gateway/admin/auth.py) lets each role do; the API refuses the rest anyway.
function capabilities(roles) {
  const admin = roles.includes("gateway-admin");
  const responder = admin || roles.includes("incident-responder");
  return { act: responder, purge: admin, exportTrail: responder };
}

async function signIn(value) {
  setToken(value);
  try {
    const me = await api("GET", "/admin/whoami");
    session.actor = me.actor;
    session.roles = me.roles;
    session.can = capabilities(me.roles);
    return true;
  } catch (error) {
    setToken(null);
    const text = error instanceof ApiError && error.status === 401
      ? "Refused: this token is not valid for the admin API."
      : `Refused: ${error.message}`;
    document.getElementById("signin-error").textContent = text;
    return false;
  }
}

function showShell() {
  document.getElementById("signin").hidden = true;
  document.getElementById("views").hidden = false;
  document.getElementById("tabs").hidden = false;
  document.getElementById("signout").hidden = false;
  document.getElementById("who").textContent = `${session.actor} (${session.roles.join(", ")})`;
  document.body.dataset.roles = session.roles.join(" ");
  for (const [name, view] of Object.entries(VIEWS)) {
    view.mount(document.getElementById(`view-${name}`), session);
  }
  route();
}

function route() {
  const name = (location.hash || "#board").slice(1);
  const chosen = VIEWS[name] ? name : "board";
  if (active && active !== chosen && VIEWS[active].stop) VIEWS[active].stop();
  for (const key of Object.keys(VIEWS)) {
    document.getElementById(`view-${key}`).hidden = key !== chosen;
    document.querySelector(`#tabs a[data-view="${key}"]`).classList.toggle("active", key === chosen);
  }
  active = chosen;
  if (VIEWS[chosen].start) VIEWS[chosen].start();
}

function signOut() {
  setToken(null);
  location.hash = "";
  location.reload();
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    const value = input.value.trim();
    input.value = "";
    if (value && (await signIn(value))) showShell();
  });
  document.getElementById("signout").addEventListener("click", signOut);
  window.addEventListener("console-signed-out", () => {
    if (!session.actor) return;
    setToken(null);
    sessionStorage.setItem(NOTICE, "Signed out: the admin API no longer accepts this token. Sign in again.");
    location.reload();  // drops every timer and view; sign-in shows again
  });
  window.addEventListener("hashchange", () => { if (session.actor) route(); });
  const notice = sessionStorage.getItem(NOTICE);
  if (notice) {
    document.getElementById("signin-error").textContent = notice;
    sessionStorage.removeItem(NOTICE);
  }
  if (token() && (await signIn(token()))) showShell();
});
