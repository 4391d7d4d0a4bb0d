// The audit log: every administrative action, who made it, on what, and
// with what outcome, newest first; older entries a page at a time.

import { useState } from "../vendor/preact-htm.js";
import { get, query } from "../api.js";
import { LoadError, Table, Title, ago, html, useLive, when } from "../ui.js";

const PAGE = 100;

const ACTIONS = {
  "POST /api/v1/releases": "uploaded firmware",
  "DELETE /api/v1/releases/{id}": "deleted firmware",
  "POST /api/v1/devices": "added a device",
  "POST /api/v1/deployments": "created a deployment",
  "POST /api/v1/deployments/{id}/cancel": "cancelled a deployment",
  "POST /api/v1/rollouts": "created a rollout",
  "POST /api/v1/rollouts/{id}/start": "started a rollout",
  "POST /api/v1/rollouts/{id}/pause": "paused a rollout",
  "POST /api/v1/rollouts/{id}/resume": "resumed a rollout",
  "POST /api/v1/rollouts/{id}/advance": "opened a rollout's next wave",
  "POST /api/v1/rollouts/{id}/cancel": "cancelled a rollout",
  "rollout paused": "paused a rollout",
  "rollout wave_opened": "opened a rollout's next wave",
  "rollout finished": "finished a rollout",
  "POST /api/v1/enrollment-secrets": "created an enrolment secret",
  "DELETE /api/v1/enrollment-secrets/{name}": "revoked an enrolment secret",
  "POST /api/v1/device/enroll": "enrolled a device",
  "POST /api/v1/devices/{name}/rotate-token": "gave a device a new token",
  "POST /api/v1/devices/{name}/revoke": "revoked a device",
  "DELETE /api/v1/devices/{name}": "deleted a device",
  "POST /api/v1/session": "signed in to the dashboard",
  "DELETE /api/v1/session": "signed out of the dashboard",
};

/** The outcome and details of a record, in short. */
function details(text) {
  let detail;
  try {
    detail = JSON.parse(text);
  } catch {
    return text;
  }
  const { status, via, ...rest } = detail;
  const parts = [];
  if (status) parts.push(status < 400 ? "done" : `refused (${status})`);
  if (via) parts.push(`from the ${via}`);
  for (const [k, v] of Object.entries(rest)) parts.push(`${k.replaceAll("_", " ")}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
  return parts.join(", ");
}

export function AuditLog() {
  const [before, setBefore] = useState([]);
  const cursor = before[before.length - 1];
  const { data, error } = useLive(() => get(`/api/v1/audit${query({ limit: PAGE, before: cursor })}`), [cursor]);
  return html`<${Title}>Audit log</${Title}>
    <p class="muted">Every administrative action, newest first.</p>
    <${LoadError} error=${error} />
    ${data && html`<${Table} label="Audit log" empty="Nothing yet."
      head=${["When", "Who", "What", "On", "Outcome"]}
      rows=${data.map((r) => html`<tr>
        <td><time datetime=${new Date(r.at).toISOString()} title=${when(r.at)}>${ago(r.at)}</time></td>
        <td>${r.actor}</td>
        <td>${ACTIONS[r.action] ?? r.action}</td>
        <td>${r.target}</td>
        <td>${details(r.detail)}</td>
      </tr>`)} />
      <nav class="pager" aria-label="Audit log pages">
        ${before.length > 0 && html`<button type="button" class="secondary" onClick=${() => setBefore(before.slice(0, -1))}>Newer entries</button>`}
        ${data.length === PAGE && html`<button type="button" class="secondary" onClick=${() => setBefore([...before, data[data.length - 1].id])}>Older entries</button>`}
      </nav>`}`;
}
