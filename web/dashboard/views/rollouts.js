// Staged rollouts: create one (a release to a device set fixed when it
// starts, wave by wave, with a soak between waves, a success threshold to
// go on, a failure threshold that pauses it, a per-device deadline and a
// limit of devices updating at once), then follow it live: each wave's
// devices confirmed, failed (with why), updating and waiting; its state
// and, when paused, who or which threshold paused it with the numbers;
// pause, resume, advance and cancel; the devices the penalty box held back;
// its history.
//
// The deployment page gets a section of its own (DEPLOYMENT_SECTIONS) that
// says which rollout a deployment belongs to.

import { useState } from "../vendor/preact-htm.js";
import { get, post, query } from "../api.js";
import {
  DeviceLink, Field, LoadError, Notice, Table, Title, ago, chipName, count, devices, html, releasesFirst,
  useLive, when,
} from "../ui.js";
import { DEPLOYMENT_SECTIONS, DeploymentDevices, Problems } from "./deployments.js";

/** A rollout's state in words. */
const STATES = {
  draft: "draft",
  running: "running",
  paused: "paused",
  finished: "finished",
  cancelled: "cancelled",
};

/** Failure reasons of a wave's devices, as the server counts them. */
const FAILURES = {
  rolled_back: "rolled back",
  failed: "failed",
  deadline: "silent past the deadline",
};

function RolloutState({ state }) {
  return html`<span class=${`badge ${state}`}>${STATES[state] ?? state}</span>`;
}

/** `500ms`, `30s`, `10m`, `2h`, `1d` or plain seconds, in milliseconds (as `airlift rollout create` reads them). */
export function parseDuration(text) {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(text);
  if (!match) return null;
  const scale = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] ?? "s"];
  return Math.round(Number(match[1]) * scale);
}

/** A plan's duration as people write it: `1 h`, `1 h 30 min`, `45 s`, `500 ms`. */
export function planDuration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms % 1000) return `${(ms / 1000).toFixed(1)} s`;
  let s = ms / 1000;
  const parts = [];
  for (const [unit, size] of [["days", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)} ${unit}`);
      s %= size;
    }
  }
  return parts.join(" ");
}

/** The waves' cumulative device counts for `total` devices, as the server resolves a plan. */
export function resolveWaves(marks, total) {
  const waves = [];
  for (const mark of marks) {
    const text = String(mark).trim();
    const reach = Math.min(total, text.endsWith("%")
      ? Math.ceil((total * Math.round(Number(text.slice(0, -1)) * 100)) / 10_000)
      : Number(text));
    if (reach > (waves[waves.length - 1] ?? 0)) waves.push(reach);
  }
  if ((waves[waves.length - 1] ?? 0) < total) waves.push(total);
  return waves;
}

/** "1 failure", "5% failures", "3 failures". */
const failuresOf = (amount) => `${amount} failure${String(amount) === "1" ? "" : "s"}`;

/** "1 time", "2 times". */
const times = (n) => `${count(n)} time${n === 1 ? "" : "s"}`;

/** "rolled back 3, failed 1". */
const failureWords = (byReason) =>
  Object.entries(byReason ?? {}).map(([reason, n]) => `${FAILURES[reason] ?? reason} ${count(n)}`).join(", ");

function NewRollout() {
  const releases = useLive(() => get("/api/v1/releases"), []).data;
  const fleet = useLive(() => get("/api/v1/fleet"), []).data;
  const [form, setForm] = useState({
    release: "", kind: "tag", tag: "", device: "", list: "",
    waves: "1%, 10%, 50%, 100%", soak: "1h", success: "95%", pauseAt: "5%", deadline: "1h",
    maxParallel: "0", penalty: "2", start: true,
  });
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const set = (key) => (e) => setForm({ ...form, [key]: e.target.type === "checkbox" ? e.target.checked : e.target.value });
  const tags = fleet?.by_tag ?? [];
  const tag = form.tag || tags[0]?.value || "";
  const names = form.list.split(/[\s,]+/).filter(Boolean);
  const target = {
    all: "all",
    tag: `tag:${tag}`,
    device: `device:${form.device.trim()}`,
    devices: `devices:${names.join(",")}`,
  }[form.kind];
  const reach = {
    all: fleet?.devices,
    tag: tags.find((t) => t.value === tag)?.devices ?? 0,
    device: 1,
    devices: names.length,
  }[form.kind];
  const marks = form.waves.split(/[\s,]+/).filter(Boolean);
  const preview = reach ? resolveWaves(marks, reach) : [];
  const release = form.release || (releases?.[0] ? String(releases[0].id) : "");
  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    const soak = parseDuration(form.soak);
    const deadline = parseDuration(form.deadline);
    if (soak === null) return setError(`the soak time "${form.soak}" is not a duration like 30s, 10m, 2h or 1d`);
    if (deadline === null) return setError(`the deadline "${form.deadline}" is not a duration like 30s, 10m, 2h or 1d`);
    setBusy(true);
    try {
      const created = await post("/api/v1/rollouts", {
        release, target, waves: marks, soak_ms: soak, success_threshold: form.success.trim(),
        failure_threshold: form.pauseAt.trim(), deadline_ms: deadline,
        max_parallel: Number(form.maxParallel || 0), penalty_failures: Number(form.penalty || 0), start: form.start,
      });
      window.location.hash = `#/rollouts/${created.id}`;
    } catch (err) {
      setError(err.message);
      setBusy(false);
    }
  };
  const waiting = releasesFirst(releases, "new-rollout-title", "New rollout");
  if (waiting) return waiting;
  const field = (id, label, key, hint, attrs = {}) => html`<div class="field">
    <label for=${id}>${label}</label>
    <input id=${id} value=${form[key]} onInput=${set(key)} aria-describedby=${`${id}-hint`} ...${attrs} />
    <span class="muted" id=${`${id}-hint`}>${hint}</span>
  </div>`;
  return html`<section aria-labelledby="new-rollout-title">
    <h2 id="new-rollout-title">New rollout</h2>
    <form class="deploy rollout" onSubmit=${submit}>
      <div class="field">
        <label for="rollout-release">Release</label>
        <select id="rollout-release" value=${release} onChange=${set("release")}>
          ${releases.map((r) => html`<option value=${String(r.id)}>#${r.id}: ${r.project} ${r.version} (${chipName(r.chip_id)})</option>`)}
        </select>
      </div>
      <fieldset>
        <legend>Roll it out to</legend>
        ${[["tag", "the devices with a tag"], ["devices", "a list of devices"], ["device", "one device"], ["all", "every device"]].map(([kind, label]) => html`
          <label><input type="radio" name="rollout-kind" value=${kind} checked=${form.kind === kind} onChange=${() => setForm({ ...form, kind })} /> ${label}</label>`)}
      </fieldset>
      ${form.kind === "tag" && html`<div class="field">
        <label for="rollout-tag">Tag</label>
        <select id="rollout-tag" value=${tag} onChange=${set("tag")}>
          ${tags.map((t) => html`<option value=${t.value}>${t.value} (${devices(t.devices)})</option>`)}
        </select>
      </div>`}
      ${form.kind === "device" && field("rollout-device", "Device name", "device", "", { required: true })}
      ${form.kind === "devices" && field("rollout-devices", "Device names", "list", "separated by commas or spaces", { required: true })}
      <p class="muted" id="rollout-reach">The device set is fixed when the rollout starts: a device tagged later is not in it.
        ${reach ? ` Reaches ${devices(reach)} now; waves of ${preview.map((n, i) => (i ? n - preview[i - 1] : n)).map(count).join(", ")} devices (fewer when some cannot take the release).` : ""}</p>
      <div class="plan-fields">
        ${field("rollout-waves", "Waves", "waves", "cumulative counts or percentages; the last wave takes the rest", { required: true })}
        ${field("rollout-soak", "Soak between waves", "soak", "30s, 10m, 2h, 1d", { required: true })}
        ${field("rollout-success", "Next wave when confirmed", "success", "a share of the open waves' devices", { required: true })}
        ${field("rollout-pause-at", "Pause at failures", "pauseAt", "a count (3) or a share of the open waves (5%)", { required: true })}
        ${field("rollout-deadline", "Per-device deadline", "deadline", "silent this long after the offer counts as failed", { required: true })}
        ${field("rollout-max-parallel", "Most updating at once", "maxParallel", "0: no limit", { type: "number", min: 0, required: true })}
        ${field("rollout-penalty", "Hold back after failures", "penalty", "devices that failed this release this many times before; 0: none", { type: "number", min: 0, required: true })}
      </div>
      <label class="check"><input type="checkbox" checked=${form.start} onChange=${set("start")} /> Start now (else a draft you start later)</label>
      <button type="submit" disabled=${busy || (form.kind === "tag" && !tag)}>${busy ? "Creating…" : form.start ? "Start the rollout" : "Create the draft"}</button>
      ${error && html`<${Notice} kind="error">Not created: ${error}</${Notice}>`}
    </form>
  </section>`;
}

export function Rollouts() {
  const { data, error } = useLive(() => get("/api/v1/rollouts"), []);
  const releases = useLive(() => get("/api/v1/releases"), []).data ?? [];
  const version = (id) => releases.find((r) => r.id === id)?.version ?? `release #${id}`;
  return html`<${Title}>Rollouts</${Title}>
    <p class="muted">A rollout offers a release wave by wave and pauses by itself when devices fail to confirm it.</p>
    <${NewRollout} />
    <section aria-labelledby="rollouts-title">
      <h2 id="rollouts-title">All rollouts</h2>
      <${LoadError} error=${error} />
      ${data && html`<${Table} label="Rollouts" empty="No rollout yet."
        head=${["Rollout", "Release", "Target", "State", "Waves open", "Why paused", "Created"]}
        rows=${data.map((r) => html`<tr>
          <td><a href=${`#/rollouts/${r.id}`}>#${r.id}</a></td>
          <td>${version(r.release_id)}</td>
          <td>${r.target}</td>
          <td><${RolloutState} state=${r.state} /></td>
          <td>${r.state === "draft" ? "-" : `${r.opened} of ${r.waves.length}`}</td>
          <td>${r.pause_reason?.message ?? ""}</td>
          <td>${ago(r.created_at)}</td>
        </tr>`)} />`}
    </section>`;
}

/** A wave's (or the whole rollout's) devices as a bar: confirmed, failed, updating, waiting. */
function WaveBar({ p, label }) {
  const parts = [["confirmed", p.confirmed], ["failed", p.failures], ["updating", p.updating], ["queued", p.waiting]];
  const total = p.eligible || 1;
  return html`<div class="progress"><div class="bar" role="img" aria-label=${label}>
    ${parts.filter(([, n]) => n > 0).map(([key, n]) => html`<span class=${`seg ${key}`} style=${{ width: `${(n * 100) / total}%` }}></span>`)}
  </div></div>`;
}

function Waves({ detail }) {
  const { progress, waves } = detail;
  const marks = detail.plan.waves;
  return html`<section aria-labelledby="waves-title" id="waves">
    <h2 id="waves-title">Waves</h2>
    <ul class="legend">
      ${[["confirmed", "Confirmed"], ["failed", "Failed"], ["updating", "Updating"], ["queued", "Waiting"]].map(([k, l]) => html`<li><span class=${`swatch ${k}`}></span>${l}</li>`)}
    </ul>
    <${Table} label="Waves" empty="The waves are fixed when the rollout starts."
      head=${["Wave", "Reaches", "", "Confirmed", "Failed", "Updating", "Waiting", "Progress"]}
      rows=${progress.map((p, i) => html`<tr class=${p.open ? "open" : "closed"}>
        <td>Wave ${p.wave}</td>
        <td>${count(waves[i])} of ${count(waves[waves.length - 1])}${marks[i] ? ` (${marks[i]})` : ""}</td>
        <td>${p.open ? html`<span class="badge running">open</span>` : html`<span class="badge">not open</span>`}</td>
        <td class="num">${count(p.confirmed)}</td>
        <td>${count(p.failures)}${p.failures > 0 ? ` (${failureWords(p.failures_by_reason)})` : ""}</td>
        <td class="num">${count(p.updating)}</td>
        <td class="num">${count(p.waiting)}</td>
        <td class="progress-cell"><${WaveBar} p=${p} label=${`wave ${p.wave}: ${count(p.confirmed)} of ${devices(p.eligible)} confirmed`} /></td>
      </tr>`)} />
  </section>`;
}

/** What happens next, or why nothing does: the state, the pause with its numbers. */
function StateNotice({ detail }) {
  const { state, pause_reason: why, plan } = detail;
  const last = detail.waves.length;
  if (state === "draft") {
    return html`<${Notice}>A draft: nothing is offered yet. Starting it fixes its device set and opens wave 1.</${Notice}>`;
  }
  if (state === "paused" && why) {
    const byThreshold = why.by === "failure_threshold";
    return html`<div class="notice paused" role="status" id="pause-reason">
      <h2>${byThreshold ? "Paused by the failure threshold" : `Paused by ${why.by}`}</h2>
      <p>${byThreshold ? `${why.message}.` : `${why.by} paused it in wave ${why.wave}.`} Devices not offered the release yet are not; those updating finish and are counted.</p>
      <dl class="numbers">
        <${Field} name="Open waves">${why.wave === 1 ? "wave 1" : `waves 1–${why.wave}`}: ${devices(why.devices)}</${Field}>
        <${Field} name="Confirmed">${count(why.confirmed)}</${Field}>
        <${Field} name="Failures">${count(why.failures)}${why.failures ? ` (${failureWords(why.failures_by_reason)})` : ""}</${Field}>
        ${why.accepted_failures > 0 && html`<${Field} name="Accepted at a resume">${count(why.accepted_failures)}</${Field}>`}
        ${why.threshold && html`<${Field} name="Failure threshold">${why.threshold}: ${devices(why.limit)}</${Field}>`}
      </dl>
      <p class="muted">Resume accepts the ${failuresOf(detail.total.failures)} so far: the threshold counts only new ones.</p>
    </div>`;
  }
  if (state === "running") {
    const open = detail.progress.slice(0, detail.opened);
    const confirmed = open.reduce((n, p) => n + p.confirmed, 0);
    const eligible = open.reduce((n, p) => n + p.eligible, 0);
    const next = detail.opened < last
      ? detail.succeeded_at
        ? `The open waves reached ${plan.success_threshold} confirmed ${ago(detail.succeeded_at)}: wave ${detail.opened + 1} opens after a soak of ${planDuration(plan.soak_ms)} (at ${when(detail.succeeded_at + plan.soak_ms)}).`
        : `Wave ${detail.opened + 1} opens once ${plan.success_threshold} of the open waves' devices confirmed (now ${count(confirmed)} of ${count(eligible)}) and a soak of ${planDuration(plan.soak_ms)} passed.`
      : "Every wave is open: it finishes when every device is done.";
    return html`<${Notice}>${next} It pauses by itself at ${failuresOf(plan.failure_threshold)}.</${Notice}>`;
  }
  if (state === "finished" && !last) {
    return html`<${Notice} kind="ok">Finished at once: none of its ${devices(detail.total.devices)} could take the release (they run it already, run another chip or security version, or are held back).</${Notice}>`;
  }
  if (state === "finished") return html`<${Notice} kind="ok">Finished: every wave opened and every device is done.</${Notice}>`;
  return html`<${Notice}>Cancelled: devices that had not finished are not offered the release any more.</${Notice}>`;
}

/** Pause, resume, advance, cancel (and start, for a draft): what the state allows. */
function Controls({ detail, onDone }) {
  const [asking, setAsking] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const { state, id } = detail;
  const act = (what) => async () => {
    setAsking(false);
    setBusy(true);
    setError(null);
    try {
      await post(`/api/v1/rollouts/${id}/${what}`);
      onDone();
    } catch (err) {
      setError(`Not done: ${err.message}`);
    } finally {
      setBusy(false);
    }
  };
  if (state === "finished" || state === "cancelled") return null;
  const more = detail.opened < detail.waves.length;
  return html`<div class="controls" role="group" aria-label="Rollout controls">
    ${state === "draft" && html`<button type="button" disabled=${busy} onClick=${act("start")}>Start</button>`}
    ${state === "running" && html`<button type="button" class="secondary" disabled=${busy} onClick=${act("pause")}>Pause</button>`}
    ${state === "paused" && html`<button type="button" disabled=${busy} onClick=${act("resume")}>Resume</button>`}
    ${state === "running" && more && html`<button type="button" class="secondary" disabled=${busy} onClick=${act("advance")}>Open wave ${detail.opened + 1} now</button>`}
    ${asking
      ? html`<span>Devices that have not finished will not be offered ${detail.release.version} any more.</span>
          <button type="button" class="danger" disabled=${busy} onClick=${act("cancel")}>Cancel the rollout</button>
          <button type="button" class="secondary" onClick=${() => setAsking(false)}>Keep it</button>`
      : html`<button type="button" class="secondary" onClick=${() => setAsking(true)}>Cancel…</button>`}
    ${error && html`<${Notice} kind="error">${error}</${Notice}>`}
  </div>`;
}

function Plan({ plan }) {
  return html`<section aria-labelledby="plan-title">
    <h2 id="plan-title">Plan</h2>
    <dl id="rollout-plan">
      <${Field} name="Waves">${plan.waves.join(", ")}</${Field}>
      <${Field} name="Next wave">when ${plan.success_threshold} of the open waves' devices confirmed, after a soak of ${planDuration(plan.soak_ms)}</${Field}>
      <${Field} name="Pauses at">${failuresOf(plan.failure_threshold)} (rolled back, failed, or silent past the deadline)</${Field}>
      <${Field} name="Deadline">${planDuration(plan.deadline_ms)} per device</${Field}>
      <${Field} name="At once">${plan.max_parallel ? `at most ${devices(plan.max_parallel)} updating` : "no limit"}</${Field}>
      <${Field} name="Penalty box">${plan.penalty_failures ? `holds back devices that failed this release ${times(plan.penalty_failures)}` : "none"}</${Field}>
    </dl>
  </section>`;
}

function HeldBack({ detail }) {
  if (!detail.held_back.length) return null;
  return html`<section aria-labelledby="held-title" id="held-back">
    <h2 id="held-title">Held back: ${devices(detail.held_back.length)}</h2>
    <p class="muted">The penalty box: they failed this release before and are in no wave.</p>
    <${Table} label="Held back devices" empty=""
      head=${["Device", "Failed this release before"]}
      rows=${detail.held_back.map((h) => html`<tr>
        <td><${DeviceLink} name=${h.device} /></td>
        <td>${times(h.failures)}</td>
      </tr>`)} />
  </section>`;
}

/** A rollout event in a sentence. */
function eventWords(e) {
  const d = e.detail ?? {};
  switch (e.kind) {
    case "created": return `Created: release #${d.release} to ${d.target}`;
    case "started": return `Started: ${devices(d.devices)} (${count(d.skipped)} cannot take it, ${count(d.held_back)} held back), waves of ${(d.waves ?? []).join(", ")}`;
    case "paused": return d.by === "failure_threshold" ? `Paused: ${d.message}` : `Paused by ${d.by ?? e.actor}`;
    case "resumed": return `Resumed, accepting ${failuresOf(count(d.accepted_failures))} so far`;
    case "advanced": return `Wave ${d.wave} opened by hand (${count(d.confirmed)} of ${count(d.devices)} confirmed before)`;
    case "wave_opened": return `Wave ${d.wave} opened (${count(d.confirmed)} of ${count(d.devices)} confirmed, soak of ${planDuration(d.after_soak_ms ?? 0)} over)`;
    case "soak_started": return `${count(d.confirmed)} of ${count(d.devices)} confirmed: the soak of ${planDuration(d.soak_ms ?? 0)} began`;
    case "deadline": return `${devices(d.devices)} silent past the ${planDuration(d.deadline_ms ?? 0)} deadline counted as failed`;
    case "finished": return `Finished: ${count(d.confirmed)} of ${count(d.devices)} confirmed, ${count(d.failures)} failed`;
    case "cancelled": return "Cancelled";
    default: return e.kind.replaceAll("_", " ");
  }
}

function History({ events }) {
  return html`<section aria-labelledby="history-title">
    <h2 id="history-title">History</h2>
    <${Table} label="Rollout history" empty="Nothing yet."
      head=${["When", "Who", "What", "State after"]}
      rows=${[...events].reverse().map((e) => html`<tr>
        <td><time datetime=${new Date(e.at).toISOString()} title=${when(e.at)}>${ago(e.at)}</time></td>
        <td>${e.actor}</td>
        <td>${eventWords(e)}</td>
        <td>${STATES[e.state] ?? e.state}${e.wave ? `, wave ${e.wave}` : ""}</td>
      </tr>`)} />
  </section>`;
}

export function RolloutPage({ id }) {
  const [acted, setActed] = useState(0);
  const { data: detail, error } = useLive(() => get(`/api/v1/rollouts/${id}${query({ limit: 0 })}`), [id, acted]);
  if (!detail) {
    return html`<${Title}>Rollout #${id}</${Title}>
      <${LoadError} error=${error} />${!error && html`<p role="status">Loading…</p>`}`;
  }
  const { release, total } = detail;
  const revision = `${detail.state} ${detail.opened} ${JSON.stringify(total.states)}`;
  const deployment = detail.deployment_id;
  return html`<${Title}>Rollout #${detail.id}: ${release.version} to ${detail.target}</${Title}>
    <p class="meta" id="rollout-meta"><${RolloutState} state=${detail.state} />${detail.waves.length ? ` wave ${detail.opened} of ${detail.waves.length} open,` : ""}
      ${` created ${when(detail.created_at)} by ${detail.created_by}, release #${release.id} (${release.project}, ${chipName(release.chip_id)})`}
      ${deployment && html`, <a href=${`#/deployments/${deployment}`}>deployment #${deployment}</a>`}</p>
    <${LoadError} error=${error} />
    <section aria-label="State" id="rollout-state">
      <${StateNotice} detail=${detail} />
      <${Controls} detail=${detail} onDone=${() => setActed((n) => n + 1)} />
    </section>
    ${detail.state !== "draft" && html`<section aria-labelledby="total-title" id="rollout-total">
      <h2 id="total-title">All waves</h2>
      <${WaveBar} p=${total} label=${`${count(total.confirmed)} of ${devices(total.eligible)} confirmed`} />
      <p class="progress-summary">${count(total.confirmed)} of ${devices(total.eligible)} confirmed, ${count(total.failures)} failed${total.failures ? ` (${failureWords(total.failures_by_reason)})` : ""}, ${count(total.updating)} updating, ${count(total.waiting)} waiting${total.skipped ? `; ${devices(total.skipped)} cannot take it or are held back` : ""}</p>
    </section>`}
    ${detail.waves.length > 0 && html`<${Waves} detail=${detail} />`}
    <${HeldBack} detail=${detail} />
    ${deployment && html`<${Problems} id=${deployment} revision=${revision} />`}
    <${Plan} plan=${detail.plan} />
    <${History} events=${detail.events} />
    ${deployment && html`<${DeploymentDevices} id=${deployment} revision=${revision} />`}`;
}

/** On a deployment's page: the rollout it belongs to, if any. */
function StagedBy({ id, revision }) {
  const { data } = useLive(() => get("/api/v1/rollouts"), [revision]);
  const rollout = data?.find((r) => r.deployment_id === id);
  if (!rollout) return null;
  return html`<section aria-labelledby="staged-title" id="staged-by">
    <h2 id="staged-title">Staged rollout #${rollout.id}</h2>
    <p><${RolloutState} state=${rollout.state} /> wave ${rollout.opened} of ${rollout.waves.length} open.
      ${rollout.pause_reason ? ` ${rollout.pause_reason.message}.` : ""}
      Its waves, thresholds and controls are on <a href=${`#/rollouts/${rollout.id}`}>the rollout's page</a>.</p>
  </section>`;
}

DEPLOYMENT_SECTIONS.unshift(StagedBy);
