// Deployments: create one (a release to one device, a tag or every
// device), follow its progress live, cancel it. Progress counts only the
// devices that can take the update; those that cannot (already running it,
// another chip, a higher security version) are shown apart with the reason,
// never as "waiting". Failed and rolled-back devices are listed with why.
//
// The deployment page is a list of sections (DEPLOYMENT_SECTIONS): staged
// rollouts add theirs (waves, thresholds, pause and resume) to that list.

import { useState } from "../vendor/preact-htm.js";
import { get, post, query } from "../api.js";
import {
  DeviceLink, LoadError, Notice, Progress, Status, Table, Title, ago, chipName, count, devices, html,
  reasonText, releasesFirst, stateText, useLive, when,
} from "../ui.js";

const PAGE = 50;

function NewDeployment({ params }) {
  const releases = useLive(() => get("/api/v1/releases"), []).data;
  const fleet = useLive(() => get("/api/v1/fleet"), []).data;
  const [release, setRelease] = useState(params.get("release") ?? "");
  const [kind, setKind] = useState("tag");
  const [tag, setTag] = useState("");
  const [device, setDevice] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const tags = fleet?.by_tag ?? [];
  const chosenTag = tag || tags[0]?.value || "";
  const target = kind === "all" ? "all" : kind === "tag" ? `tag:${chosenTag}` : `device:${device.trim()}`;
  const reach = kind === "all"
    ? fleet && devices(fleet.devices)
    : kind === "tag" ? devices(tags.find((t) => t.value === chosenTag)?.devices ?? 0) : "1 device";
  const chosen = release || (releases?.[0] ? String(releases[0].id) : "");
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const created = await post("/api/v1/deployments", { release: chosen, target });
      window.location.hash = `#/deployments/${created.id}`;
    } catch (err) {
      setError(err.message);
      setBusy(false);
    }
  };
  const waiting = releasesFirst(releases, "new-title", "New deployment");
  if (waiting) return waiting;
  return html`<section aria-labelledby="new-title">
    <h2 id="new-title">New deployment</h2>
    <form class="deploy" onSubmit=${submit}>
      <div class="field">
        <label for="release">Release</label>
        <select id="release" value=${chosen} onChange=${(e) => setRelease(e.target.value)}>
          ${releases.map((r) => html`<option value=${String(r.id)}>#${r.id}: ${r.project} ${r.version} (${chipName(r.chip_id)})</option>`)}
        </select>
      </div>
      <fieldset>
        <legend>Send it to</legend>
        <label><input type="radio" name="kind" value="tag" checked=${kind === "tag"} onChange=${() => setKind("tag")} /> the devices with a tag</label>
        <label><input type="radio" name="kind" value="device" checked=${kind === "device"} onChange=${() => setKind("device")} /> one device</label>
        <label><input type="radio" name="kind" value="all" checked=${kind === "all"} onChange=${() => setKind("all")} /> every device</label>
      </fieldset>
      ${kind === "tag" && html`<div class="field">
        <label for="target-tag">Tag</label>
        <select id="target-tag" value=${chosenTag} onChange=${(e) => setTag(e.target.value)}>
          ${tags.map((t) => html`<option value=${t.value}>${t.value} (${devices(t.devices)})</option>`)}
        </select>
      </div>`}
      ${kind === "device" && html`<div class="field">
        <label for="target-device">Device name</label>
        <input id="target-device" required value=${device} onInput=${(e) => setDevice(e.target.value)} />
      </div>`}
      <p class="muted">Reaches ${reach ?? "…"}; devices that cannot take this release are skipped and shown apart.</p>
      <button type="submit" disabled=${busy || (kind === "tag" && !chosenTag)}>${busy ? "Deploying…" : "Deploy"}</button>
      ${error && html`<${Notice} kind="error">Not deployed: ${error}</${Notice}>`}
    </form>
  </section>`;
}

export function Deployments({ params }) {
  const { data, error } = useLive(() => get("/api/v1/deployments"), []);
  return html`<${Title}>Deployments</${Title}>
    <${NewDeployment} params=${params} />
    <section aria-labelledby="list-title">
      <h2 id="list-title">All deployments</h2>
      <${LoadError} error=${error} />
      ${data && html`<${Table} label="Deployments" empty="No deployment yet."
        head=${["Deployment", "Release", "Target", "Created", "Status", "Progress"]}
        rows=${data.map((d) => html`<tr>
          <td><a href=${`#/deployments/${d.id}`}>#${d.id}</a></td>
          <td>${d.version}</td>
          <td>${d.target}</td>
          <td>${ago(d.created_at)}</td>
          <td><${Status} state=${d.state} /></td>
          <td class="progress-cell"><${Progress} progress=${d} /></td>
        </tr>`)} />`}
    </section>`;
}

/** The devices that cannot take the update, by reason. */
function Unable({ detail }) {
  const skipped = detail.reasons.skipped ?? {};
  const total = detail.counts.skipped ?? 0;
  if (!total) return null;
  const words = {
    already_running: "already run this release",
    chip: `run on another chip (this release is for ${chipName(detail.release.chip_id)})`,
    security_version: `require a security version above ${detail.release.security_version}`,
  };
  return html`<section aria-labelledby="unable-title" id="unable">
    <h2 id="unable-title">Cannot take this update: ${devices(total)}</h2>
    <p class="muted">Not counted in the progress above: they will not be offered this release.</p>
    <ul>${Object.entries(skipped).map(([reason, n]) => html`<li>${devices(n)} ${words[reason] ?? reasonText(reason)}</li>`)}</ul>
  </section>`;
}

/** Failed and rolled-back devices, each with why (also on a rollout's page). */
export function Problems({ id, revision }) {
  const { data } = useLive(() => get(`/api/v1/deployments/${id}${query({ state: "failed,rolled_back", limit: 100 })}`), [id, revision]);
  if (!data || data.assignments_total === 0) return null;
  return html`<section aria-labelledby="problems-title" id="problems">
    <h2 id="problems-title">Failed and rolled back: ${devices(data.assignments_total)}</h2>
    ${Object.entries(data.reasons)
      .filter(([state]) => state === "failed" || state === "rolled_back")
      .map(([state, reasons]) => html`<p>${stateText(state)}: ${Object.entries(reasons).map(([r, n]) => `${count(n)} because ${reasonText(r)}`).join("; ")}</p>`)}
    <${Table} label="Failed and rolled back devices" empty=""
      head=${["Device", "Result", "Why", "When"]}
      rows=${data.assignments.map((a) => html`<tr>
        <td><${DeviceLink} name=${a.device_name} /></td>
        <td><span class=${`badge ${a.state}`}>${stateText(a.state)}</span></td>
        <td>${reasonText(a.reason)}</td>
        <td>${ago(a.updated_at)}</td>
      </tr>`)} />
    ${data.assignments_total > data.assignments.length && html`<p class="muted">The first ${data.assignments.length} are listed.</p>`}
  </section>`;
}

function Versions({ detail }) {
  return html`<section aria-labelledby="versions-title">
    <h2 id="versions-title">Versions its devices run now</h2>
    <ul class="inline">${detail.versions.map((v) => html`<li>${v.value ?? "never reported"}: <strong>${count(v.devices)}</strong></li>`)}</ul>
  </section>`;
}

/** The deployment's devices, a page at a time, filtered by state (also on a rollout's page, with each device's wave). */
export function DeploymentDevices({ id, revision, label = "Devices of this deployment" }) {
  const [state, setState] = useState("");
  const [page, setPage] = useState(1);
  const { data } = useLive(
    () => get(`/api/v1/deployments/${id}${query({ state, limit: PAGE, offset: (page - 1) * PAGE })}`),
    [id, state, page, revision],
  );
  const pages = data ? Math.max(1, Math.ceil(data.assignments_total / PAGE)) : 1;
  const waves = data?.assignments.some((a) => a.wave > 0);
  return html`<section aria-labelledby="devices-title">
    <h2 id="devices-title">Devices</h2>
    <div class="field">
      <label for="assignment-state">Show</label>
      <select id="assignment-state" value=${state} onChange=${(e) => { setState(e.target.value); setPage(1); }}>
        <option value="">all</option>
        ${data && Object.entries(data.counts).filter(([, n]) => n > 0).map(([s, n]) => html`<option value=${s}>${stateText(s)} (${count(n)})</option>`)}
      </select>
    </div>
    ${data && html`<${Table} label=${label} empty="None."
      head=${waves ? ["Device", "Wave", "State", "Why", "Since"] : ["Device", "State", "Why", "Since"]}
      rows=${data.assignments.map((a) => html`<tr>
        <td><${DeviceLink} name=${a.device_name} /></td>
        ${waves && html`<td>${a.wave || "-"}</td>`}
        <td>${stateText(a.state)}</td>
        <td>${reasonText(a.reason)}</td>
        <td>${ago(a.updated_at)}</td>
      </tr>`)} />`}
    ${pages > 1 && html`<nav class="pager" aria-label="Pages">
      <button type="button" class="secondary" disabled=${page <= 1} onClick=${() => setPage(page - 1)}>Previous page</button>
      <span>Page ${page} of ${pages}</span>
      <button type="button" class="secondary" disabled=${page >= pages} onClick=${() => setPage(page + 1)}>Next page</button>
    </nav>`}
  </section>`;
}

/**
 * The sections of a deployment's page, in order, each given the deployment
 * (`detail`, as GET /api/v1/deployments/ID answers without assignments),
 * its `id`, and a `revision` that changes whenever its counts or state do
 * (a section that loads more reloads then, so it never lags the header).
 * Staged rollouts put theirs first (views/rollouts.js).
 */
export const DEPLOYMENT_SECTIONS = [Unable, Problems, Versions, DeploymentDevices];

function Cancel({ detail, onCancelled }) {
  const [asking, setAsking] = useState(false);
  const [error, setError] = useState(null);
  if (detail.state !== "active") return null;
  const cancel = async () => {
    setAsking(false);
    try {
      await post(`/api/v1/deployments/${detail.id}/cancel`);
      onCancelled();
    } catch (err) {
      setError(err.message);
    }
  };
  return html`<div class="cancel">
    ${asking
      ? html`<span>Devices that have not finished will not be offered ${detail.release.version} any more.</span>
          <button type="button" class="danger" onClick=${cancel}>Cancel the deployment</button>
          <button type="button" class="secondary" onClick=${() => setAsking(false)}>Keep it going</button>`
      : html`<button type="button" class="secondary" onClick=${() => setAsking(true)}>Cancel…</button>`}
    ${error && html`<${Notice} kind="error">Not cancelled: ${error}</${Notice}>`}
  </div>`;
}

export function DeploymentPage({ id }) {
  const [cancelled, setCancelled] = useState(0);
  const { data: detail, error } = useLive(() => get(`/api/v1/deployments/${id}${query({ limit: 0 })}`), [id, cancelled]);
  if (!detail) {
    return html`<${Title}>Deployment #${id}</${Title}>
      <${LoadError} error=${error} />${!error && html`<p role="status">Loading…</p>`}`;
  }
  const revision = `${detail.state} ${JSON.stringify(detail.counts)}`;
  return html`<${Title}>Deployment #${detail.id}: ${detail.release.version} to ${detail.target}</${Title}>
    <p class="meta"><${Status} state=${detail.state} />${` created ${when(detail.created_at)}, release #${detail.release.id} (${detail.release.project}, ${chipName(detail.release.chip_id)}), ${devices(detail.devices)} targeted`}</p>
    <${LoadError} error=${error} />
    <${Cancel} detail=${detail} onCancelled=${() => setCancelled((n) => n + 1)} />
    <section aria-labelledby="progress-title" id="deployment-progress">
      <h2 id="progress-title">Progress</h2>
      <${Progress} progress=${detail} legend=${true} />
    </section>
    ${DEPLOYMENT_SECTIONS.map((Section) => html`<${Section} detail=${detail} id=${detail.id} revision=${revision} />`)}`;
}
