// The fleet at a glance: devices by firmware version and by state, the
// deployments in progress, recent failures and rollbacks with their
// reasons, and the devices not seen for a while.

import { get } from "../api.js";
import {
  DeploymentLink, DeviceLink, LoadError, Progress, Table, Title, ago, count, devices, duration, engineText,
  html, reasonText, stateText, useLive,
} from "../ui.js";

function Tallies({ label, rows, filter, words }) {
  const total = rows.reduce((sum, r) => sum + r.devices, 0) || 1;
  return html`<${Table} label=${label} head=${[label, "Devices", ""]} empty="No devices yet."
    rows=${rows.map((r) => html`<tr>
      <td>${r.value === null ? html`<em>${words(null)}</em>` : html`<a href=${`#/devices?${filter}=${encodeURIComponent(r.value)}`}>${words(r.value)}</a>`}</td>
      <td class="num">${count(r.devices)}</td>
      <td class="share"><span class="share-bar" style=${{ width: `${(r.devices * 100) / total}%` }}></span></td>
    </tr>`)} />`;
}

export function Overview() {
  const { data, error } = useLive(() => get("/api/v1/fleet"), []);
  if (!data) return html`<${Title}>Overview</${Title}><${LoadError} error=${error} />${!error && html`<p role="status">Loading…</p>`}`;
  const unseenFor = duration(data.unseen_after_ms);
  return html`<${Title}>Overview</${Title}>
    <${LoadError} error=${error} />
    <section class="cards" aria-label="Fleet in numbers">
      <div class="card"><span class="big" id="device-count">${count(data.devices)}</span> devices</div>
      <div class="card"><span class="big">${count(data.in_progress.length)}</span> deployments in progress</div>
      <div class="card"><span class="big">${count(data.unseen)}</span> not seen for ${unseenFor}</div>
      <div class="card"><span class="big">${count(data.never_seen)}</span> never checked in</div>
    </section>
    <div class="grid">
      <section aria-labelledby="by-version">
        <h2 id="by-version">Firmware versions</h2>
        <${Tallies} label="Version" rows=${data.by_version} filter="version" words=${(v) => v ?? "never reported"} />
      </section>
      <section aria-labelledby="by-state">
        <h2 id="by-state">Device states</h2>
        <${Tallies} label="State" rows=${data.by_state} filter="state" words=${engineText} />
      </section>
    </div>
    <section aria-labelledby="in-progress">
      <h2 id="in-progress">Deployments in progress</h2>
      ${data.in_progress.length === 0
        ? html`<p class="empty">None: every deployment has finished. <a href="#/deployments">Deploy a release</a>.</p>`
        : html`<ul class="deployments">${data.in_progress.map((d) => html`<li>
            <${DeploymentLink} id=${d.id}>${d.version} to ${d.target}</${DeploymentLink}>
            <${Progress} progress=${d} />
          </li>`)}</ul>`}
    </section>
    <section aria-labelledby="problems">
      <h2 id="problems">Recent failures and rollbacks</h2>
      <${Table} label="Recent failures and rollbacks" empty="No update has failed or rolled back."
        head=${["Device", "Release", "Result", "Why", "When"]}
        rows=${data.problems.map((p) => html`<tr>
          <td><${DeviceLink} name=${p.device} /></td>
          <td><${DeploymentLink} id=${p.deployment_id}>${p.version}</${DeploymentLink}></td>
          <td><span class=${`badge ${p.state}`}>${stateText(p.state)}</span></td>
          <td>${reasonText(p.reason)}</td>
          <td>${ago(p.updated_at)}</td>
        </tr>`)} />
    </section>
    <section aria-labelledby="unseen">
      <h2 id="unseen">Not seen for a while</h2>
      <${Table} label="Devices not seen for a while" empty=${`Every device that checked in did so in the last ${unseenFor}.`}
        head=${["Device", "Last seen", "Version"]}
        rows=${data.unseen_devices.map((d) => html`<tr>
          <td><${DeviceLink} name=${d.name} /></td>
          <td>${ago(d.status.last_seen)}</td>
          <td>${d.status.version ?? "-"}</td>
        </tr>`)} />
      ${data.unseen > data.unseen_devices.length && html`<p><a href=${`#/devices?seen=over:${data.unseen_after_ms / 1000}`}>All ${devices(data.unseen)} not seen for ${unseenFor}</a></p>`}
    </section>`;
}
