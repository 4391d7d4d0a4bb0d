// What every view shares: the live-data hook, words for the server's codes,
// formatting, and small components (tables, progress bars, notices).

import { createContext, html, useContext, useEffect, useRef, useState } from "./vendor/preact-htm.js";

export { html };

/** A counter that moves on every change notice from the server. */
export const Live = createContext(0);

/**
 * Loads `load()` now, again when `deps` change, and again on every change
 * notice, so the view follows the fleet without reloading. Keeps showing
 * the last answer while the next one loads; a late answer never replaces
 * a newer one.
 */
export function useLive(load, deps) {
  const live = useContext(Live);
  const [state, setState] = useState({ data: undefined, error: null });
  const latest = useRef(0);
  useEffect(() => {
    const mine = ++latest.current;
    load().then(
      (data) => mine === latest.current && setState({ data, error: null }),
      (error) => mine === latest.current && setState((s) => ({ data: s.data, error })),
    );
  }, [...deps, live]);
  return state;
}

const CHIPS = {
  0: "ESP32", 2: "ESP32-S2", 5: "ESP32-C3", 9: "ESP32-S3", 12: "ESP32-C2", 13: "ESP32-C6",
  16: "ESP32-H2", 18: "ESP32-P4", 20: "ESP32-C61", 23: "ESP32-C5", 25: "ESP32-H21",
  28: "ESP32-H4", 31: "ESP32-E22", 32: "ESP32-S31",
};

/** The chip's name for an ESP image chip id. */
export const chipName = (id) => (id === null || id === undefined ? "-" : CHIPS[id] ?? `chip id ${id}`);

const REASONS = {
  verification: "the image failed verification: it is corrupt or differs from its signed manifest",
  signature: "the signature is invalid or made with a key the device does not trust",
  chip: "the image is built for another chip",
  too_big: "the image does not fit the device's update slot",
  security_version: "the image's security version is below the device's minimum",
  download: "the download failed",
  flash: "writing the device's flash failed",
  boot_failed: "the new firmware did not confirm within its allowed boots, so the device went back to the previous one",
  other: "another error (see the device's events)",
  already_running: "already runs this release",
  cancelled: "the deployment was cancelled",
  superseded: "a newer deployment replaced this one",
};

/** A reason code in words (the code itself when unknown). */
export const reasonText = (code) => (code ? REASONS[code] ?? code.replaceAll("_", " ") : "");

const STATES = {
  pending: "waiting for check-in",
  offered: "offered",
  downloading: "downloading",
  installed: "installed, rebooting",
  booted: "booted, on trial",
  confirmed: "confirmed",
  failed: "failed",
  rolled_back: "rolled back",
  cancelled: "cancelled",
  skipped: "cannot take it",
  waiting: "waiting for its wave",
};

/** An assignment state in words. */
export const stateText = (state) => STATES[state] ?? state;

const ENGINE = {
  idle: "idle",
  downloading: "downloading an update",
  installed: "update installed, reboot pending",
  trial: "on trial (new firmware not confirmed yet)",
};

/** A device engine state in words. */
export const engineText = (state) => (state ? ENGINE[state] ?? state : "never checked in");

const EVENTS = {
  downloading: "started downloading",
  verifying: "verifying",
  installed: "installed in the inactive slot",
  rebooting: "rebooting into it",
  booted: "booted the new firmware",
  confirmed: "confirmed the new firmware",
  rolled_back: "rolled back",
  failed: "failed",
};

/** A device event kind in words. */
export const eventText = (kind) => EVENTS[kind] ?? kind;

/** "3 s", "5 min", "2 h", "4 days" for a duration in milliseconds. */
export function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} days`;
}

/** "3 s ago", "5 min ago", ... for a Unix-millisecond time. */
export const ago = (ms) => (ms ? `${duration(Date.now() - ms)} ago` : "never");

/** Local date and time of a Unix-millisecond time. */
export const when = (ms) => (ms ? new Date(ms).toLocaleString() : "-");

/** A byte count for people. */
export function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
}

/** A count with thousands separators. */
export const count = (n) => Number(n ?? 0).toLocaleString("en");

/** "1 device", "3 devices". */
export const devices = (n) => `${count(n)} device${n === 1 ? "" : "s"}`;

/** A table that scrolls sideways on its own on a narrow screen. */
export function Table({ label, head, rows, empty }) {
  if (!rows.length) return html`<p class="empty">${empty}</p>`;
  return html`<div class="table-wrap" role="region" aria-label=${label} tabindex="0">
    <table>
      <thead><tr>${head.map((h) => html`<th scope="col">${h}</th>`)}</tr></thead>
      <tbody>${rows}</tbody>
    </table>
  </div>`;
}

/** A message for the user: `kind` is "error", "ok" or "info". */
export function Notice({ kind = "info", children }) {
  return html`<div class=${`notice ${kind}`} role=${kind === "error" ? "alert" : "status"}>${children}</div>`;
}

/** The error of a failed load, unless it is a 401 (the sign-in form shows then). */
export function LoadError({ error }) {
  if (!error || error.status === 401) return null;
  return html`<${Notice} kind="error">Could not load this page: ${error.message}</${Notice}>`;
}

/** The segments of a deployment's progress, in order, with their states. */
export const PROGRESS_PARTS = [
  ["confirmed", "Confirmed", ["confirmed"]],
  ["updating", "Updating", ["offered", "downloading", "installed", "booted"]],
  ["waiting", "Waiting for check-in", ["pending"]],
  ["queued", "Waiting for their wave", ["waiting"]],
  ["failed", "Failed", ["failed"]],
  ["rolled_back", "Rolled back", ["rolled_back"]],
  ["cancelled", "Cancelled", ["cancelled"]],
];

/**
 * A deployment's progress over the devices that can take it (skipped
 * devices are not part of it: they are never "waiting").
 */
export function Progress({ progress, legend = false }) {
  const total = progress.eligible;
  const parts = PROGRESS_PARTS.map(([key, label, states]) => ({
    key,
    label,
    n: states.reduce((sum, s) => sum + (progress.counts[s] ?? 0), 0),
  }));
  const confirmed = progress.counts.confirmed ?? 0;
  const percent = total ? Math.floor((confirmed * 100) / total) : 0;
  const summary = total
    ? `${count(confirmed)} of ${devices(total)} confirmed (${percent}%)`
    : "no device can take this update";
  return html`<div class="progress">
    <div class="bar" role="img" aria-label=${summary}>
      ${parts.filter((p) => p.n > 0).map((p) => html`<span class=${`seg ${p.key}`} style=${{ width: `${(p.n * 100) / total}%` }}></span>`)}
    </div>
    <p class="progress-summary">${summary}</p>
    ${legend && html`<ul class="legend">
      ${parts.map((p) => html`<li><span class=${`swatch ${p.key}`}></span>${p.label}: <strong>${count(p.n)}</strong></li>`)}
    </ul>`}
  </div>`;
}

/**
 * What a form that starts from a release shows until it can: "Loading…",
 * or, with no release uploaded yet, where to upload one. `null` once it can.
 */
export function releasesFirst(releases, id, title) {
  if (!releases) return html`<section><p role="status">Loading…</p></section>`;
  if (releases.length) return null;
  return html`<section aria-labelledby=${id}><h2 id=${id}>${title}</h2>
    <p class="empty">Upload a release first, in <a href="#/firmware">Firmware</a>.</p></section>`;
}

/** One name and value of a description list (`<dl>`). */
export function Field({ name, children }) {
  return html`<div class="kv"><dt>${name}</dt><dd>${children}</dd></div>`;
}

/** A badge for a deployment's state. */
export function Status({ state }) {
  const words = { active: "in progress", finished: "finished", cancelled: "cancelled" };
  return html`<span class=${`badge ${state}`}>${words[state] ?? state}</span>`;
}

/** A page heading that takes the focus when the page opens (for keyboard and screen reader users). */
export function Title({ children }) {
  const ref = useRef(null);
  useEffect(() => ref.current?.focus(), []);
  return html`<h1 tabindex="-1" ref=${ref}>${children}</h1>`;
}

/** A link to a device's page. */
export const DeviceLink = ({ name }) => html`<a href=${`#/devices/${encodeURIComponent(name)}`}>${name}</a>`;

/** A link to a deployment's page. */
export const DeploymentLink = ({ id, children }) => html`<a href=${`#/deployments/${id}`}>${children ?? `#${id}`}</a>`;
