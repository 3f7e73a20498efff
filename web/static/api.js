// Requests to the PopQL web server. The token travels in a cookie set by the first page load.

export class ApiError extends Error {
  constructor(status, payload) {
    super(payload?.error?.message || payload?.error?.rendered || `HTTP ${status}`);
    this.status = status;
    this.payload = payload;
  }
}

async function handle(response) {
  const type = response.headers.get("content-type") || "";
  const payload = type.includes("application/json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, typeof payload === "string" ? { error: { message: payload } } : payload);
  return payload;
}

export async function get(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    for (const item of Array.isArray(v) ? v : [v]) url.searchParams.append(k, item);
  }
  return handle(await fetch(url, { credentials: "same-origin" }));
}

export async function post(path, body) {
  return handle(await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  }));
}
