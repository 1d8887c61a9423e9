// Every call of the dashboard goes through the public /v1 API with the signed-in token,
// sent as a bearer header (never in a URL). The token lives in sessionStorage: this tab only.
const KEY = "symphonyd.token";

export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
  },
  whoami: null,
  get reader() { return !this.whoami || this.whoami.scope === "reader"; },
};

async function failure(response) {
  let text = "";
  try { text = await response.text(); } catch { /* the body is gone */ }
  try {
    const body = JSON.parse(text);
    if (body && body.error) return new ApiError(response.status, body.error.code, body.error.message);
  } catch { /* not JSON */ }
  return new ApiError(response.status, "http_error", text || response.statusText || "request failed");
}

export async function api(method, path, body, { raw = false } = {}) {
  const headers = { Authorization: `Bearer ${session.token}` };
  const init = { method, headers };
  if (body !== undefined) {
    if (raw) init.body = body;
    else { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  }
  let response;
  try { response = await fetch(path, init); } catch (exc) {
    throw new ApiError(0, "unreachable", `the node did not answer (${exc.message})`);
  }
  if (!response.ok) throw await failure(response);
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// An upload with progress: fetch() cannot report upload progress, XMLHttpRequest can.
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${session.token}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body?.error?.code || "http_error",
        body?.error?.message || xhr.statusText));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "unreachable", "the upload broke off")));
    xhr.send(file);
  });
}
