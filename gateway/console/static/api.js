// The admin API client: the bearer token lives in this tab's sessionStorage only (no cookie,
// so no CSRF surface); every call sends it as Authorization.
const KEY = "shopino-gateway-admin-token";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

async function send(method, path, body) {
  const headers = { Authorization: `Bearer ${token() || ""}` };
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return fetch(path, init);
}

export async function api(method, path, body) {
  const response = await send(method, path, body);
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { title: `HTTP ${response.status}` };
  }
  if (!response.ok) {
    const challenge = response.headers.get("WWW-Authenticate") || "";
    if (response.status === 401 && !challenge.includes("insufficient_user_authentication")) {
      // The token stopped being valid (expired, revoked, rotated): back to sign-in. A step-up
      // refusal (MFA too old for a change) keeps the session: reading still works.
      window.dispatchEvent(new CustomEvent("console-signed-out"));
    }
    throw new ApiError(response.status, data);
  }
  return data;
}

// A download (audit export): the body as a Blob, never parsed or shown.
export async function download(path) {
  const response = await send("GET", path);
  if (!response.ok) {
    let problem = {};
    try { problem = await response.json(); } catch { problem = {}; }
    throw new ApiError(response.status, problem);
  }
  return response.blob();
}
