// One device: the firmware it runs (slot, version, SHA-256, security
// version), its boot count and state, and its update history as a
// timeline: each deployment that reached it, what the device reported, and
// why an update failed or rolled back.

import { get, query } from "../api.js";
import {
  DeploymentLink, Field, LoadError, Title, ago, chipName, engineText, eventText, html, reasonText,
  stateText, useLive, when,
} from "../ui.js";

const EVENTS_SHOWN = 500;

function Timeline({ history, events }) {
  // Events by deployment; events of no deployment came from the device's own page.
  const byDeployment = new Map();
  for (const e of [...events].reverse()) {
    const key = e.deployment_id ?? "local";
    if (!byDeployment.has(key)) byDeployment.set(key, []);
    byDeployment.get(key).push(e);
  }
  const entries = history.map((a) => ({ key: a.deployment_id, assignment: a, events: byDeployment.get(a.deployment_id) ?? [] }));
  if (byDeployment.has("local")) {
    const local = byDeployment.get("local");
    entries.push({ key: "local", assignment: null, events: local, at: local[local.length - 1].at });
  }
  entries.sort((a, b) => (b.assignment?.updated_at ?? b.at) - (a.assignment?.updated_at ?? a.at));
  if (!entries.length) return html`<p class="empty">No update has reached this device yet.</p>`;
  return html`<ol class="timeline" id="history">
    ${entries.map(({ key, assignment: a, events: list }) => html`<li key=${key} class=${a ? `entry ${a.state}` : "entry local"}>
      <h3>
        ${a
          ? html`${a.version} <span class=${`badge ${a.state}`}>${stateText(a.state)}</span>`
          : html`Installed from the device's own page`}
      </h3>
      ${a && html`<p class="meta">
        <${DeploymentLink} id=${a.deployment_id}>Deployment #${a.deployment_id}</${DeploymentLink}> to ${a.target}, ${when(a.created_at)}
      </p>`}
      ${a?.reason && html`<p class="why">Why: ${reasonText(a.reason)}</p>`}
      ${list.length > 0 && html`<ul class="events">
        ${list.map((e) => html`<li>
          <time datetime=${new Date(e.at).toISOString()}>${when(e.at)}</time>
          <span class=${`event ${e.kind}`}>${eventText(e.kind)}</span>
          ${e.reason && html` (${reasonText(e.reason)})`}
          ${e.detail && html` <span class="detail">${e.detail}</span>`}
        </li>`)}
      </ul>`}
    </li>`)}
  </ol>`;
}

export function DevicePage({ name }) {
  const path = `/api/v1/devices/${encodeURIComponent(name)}`;
  const device = useLive(() => get(path), [name]);
  const events = useLive(() => get(`${path}/events${query({ limit: EVENTS_SHOWN })}`), [name]);
  const d = device.data;
  if (!d) {
    return html`<${Title}>Device ${name}</${Title}>
      <${LoadError} error=${device.error} />${!device.error && html`<p role="status">Loading…</p>`}`;
  }
  const s = d.status;
  return html`<${Title}>Device ${d.name}</${Title}>
    <p>${d.tags.length ? d.tags.map((t) => html`<a class="tag" href=${`#/devices?tag=${encodeURIComponent(t)}`}>${t}</a>`) : "No tags."}</p>
    <${LoadError} error=${device.error || events.error} />
    <div class="grid">
      <section aria-labelledby="firmware">
        <h2 id="firmware">Firmware</h2>
        <dl id="firmware-info">
          <${Field} name="Version">${s.version ?? "-"}</${Field}>
          <${Field} name="Project">${s.project ?? "-"}</${Field}>
          <${Field} name="Running slot">${s.slot === null ? "-" : `ota_${s.slot}`}</${Field}>
          <${Field} name="SHA-256"><code class="hash">${s.sha256 ?? "-"}</code></${Field}>
          <${Field} name="Security version">${s.security_version ?? "-"}</${Field}>
          <${Field} name="Chip">${chipName(s.chip_id)}</${Field}>
        </dl>
      </section>
      <section aria-labelledby="status">
        <h2 id="status">Status</h2>
        <dl id="device-status">
          <${Field} name="State">${engineText(s.state)}</${Field}>
          <${Field} name="Boot count">${s.boot_count ?? "-"}</${Field}>
          <${Field} name="Last seen">${s.last_seen ? html`${ago(s.last_seen)} (${when(s.last_seen)})` : "never"}</${Field}>
          <${Field} name="Update">${d.assignment
            ? html`<${DeploymentLink} id=${d.assignment.deployment_id}>${d.assignment.version}</${DeploymentLink}>: ${stateText(d.assignment.state)}`
            : "none in progress"}</${Field}>
          <${Field} name="Added">${when(d.created_at)}</${Field}>
        </dl>
      </section>
    </div>
    <section aria-labelledby="updates">
      <h2 id="updates">Update history</h2>
      <${Timeline} history=${d.history} events=${events.data ?? []} />
    </section>`;
}
