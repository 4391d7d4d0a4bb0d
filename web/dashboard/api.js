// The dashboard's only way to the server: the REST API at the address in
// config.js. Credentials are the session cookie the browser keeps (HttpOnly:
// no script here ever sees it); requests that change something carry the
// X-Airlift-CSRF header the server asks of cookie-authenticated changes.

import { API } from "./config.js";

const base = API.replace(/\/+$/, "");

/** The API's address, for messages. */
export const apiAddress = base || window.location.origin;

/** An answer the server refused, with its code and message (`{"error": {...}}`). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const signedOutListeners = new Set();

/** Calls `listener` whenever the server says the session is over (401). */
export function onSessionEnded(listener) {
  signedOutListeners.add(listener);
  return () => signedOutListeners.delete(listener);
}

function sessionEnded() {
  for (const listener of signedOutListeners) listener();
}

function refusal(status, body) {
  const error = body && body.error;
  if (error && error.message) return new ApiError(status, error.code, error.message);
  return new ApiError(status, "http", `the server answered ${status}`);
}

async function request(path, { method = "GET", json } = {}) {
  const init = { method, credentials: "include", headers: {} };
  if (method !== "GET") init.headers["X-Airlift-CSRF"] = "1";
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(base + path, init);
  } catch {
    throw new ApiError(0, "unreachable", `cannot reach the Airlift server at ${apiAddress}`);
  }
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith("/api/v1/session")) sessionEnded();
    throw refusal(response.status, body);
  }
  return body;
}

export const get = (path) => request(path);
export const post = (path, json = {}) => request(path, { method: "POST", json });
export const remove = (path) => request(path, { method: "DELETE" });

/** A query string from the entries of `params` that have a value. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

function base64(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/**
 * Uploads a firmware image (and an offline-signed manifest, when given).
 * `onProgress(sent, total)` follows the bytes going out; resolves to
 * `{ created, release }`, rejects with an ApiError carrying the server's reason.
 */
export async function uploadFirmware(file, manifest, onProgress) {
  const manifestHeader = manifest ? base64(new Uint8Array(await manifest.arrayBuffer())) : null;
  return new Promise((resolve, reject) => {
    // XMLHttpRequest, not fetch: only it reports upload progress.
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${base}/api/v1/releases`);
    xhr.withCredentials = true;
    xhr.setRequestHeader("X-Airlift-CSRF", "1");
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    if (manifestHeader) xhr.setRequestHeader("X-Airlift-Manifest", manifestHeader);
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () => reject(new ApiError(0, "unreachable", `cannot reach the Airlift server at ${apiAddress}`));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // Not JSON: refusal() says what status came back.
      }
      if (xhr.status === 200 || xhr.status === 201) {
        resolve({ created: xhr.status === 201, release: body });
      } else {
        if (xhr.status === 401) sessionEnded();
        reject(refusal(xhr.status, body));
      }
    };
    xhr.send(file);
  });
}

/**
 * Follows the server's change notices (server-sent events). `onChange` runs
 * on each notice, `onState(connected)` when the stream opens or breaks (the
 * browser reconnects by itself). Returns the function that stops it.
 */
export function followChanges(onChange, onState) {
  const source = new EventSource(`${base}/api/v1/fleet/changes`, { withCredentials: true });
  source.addEventListener("change", onChange);
  source.onopen = () => onState(true);
  source.onerror = () => onState(false);
  return () => source.close();
}
