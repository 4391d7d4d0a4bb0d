// The device list: one page of 50 at a time from the server, which does
// the searching and filtering, so it stays fast with 10,000 devices. The
// filters live in the address (#/devices?tag=lab&page=2), so a filtered
// list can be bookmarked and the Back button returns to it.

import { useEffect, useState } from "../vendor/preact-htm.js";
import { get, query } from "../api.js";
import {
  DeploymentLink, DeviceLink, LoadError, Table, Title, ago, count, engineText, html, stateText, useLive,
} from "../ui.js";

const PAGE = 50;

const SEEN = [
  ["", "any time"],
  ["within:300", "in the last 5 minutes"],
  ["within:3600", "in the last hour"],
  ["within:86400", "in the last day"],
  ["over:3600", "not for an hour"],
  ["over:86400", "not for a day"],
  ["never", "never"],
];

const FILTERS = ["q", "tag", "version", "state", "seen"];

function Select({ id, label, value, options, onChange }) {
  return html`<div class="field">
    <label for=${id}>${label}</label>
    <select id=${id} value=${value} onChange=${(e) => onChange(e.target.value)}>
      ${options.map(([v, text]) => html`<option value=${v}>${text}</option>`)}
    </select>
  </div>`;
}

/** The options of a select: "any", those the fleet has, and the current value if it has gone. */
function options(tallies, current, words = (v) => v) {
  const values = tallies.filter((t) => t.value !== null).map((t) => [t.value, `${words(t.value)} (${count(t.devices)})`]);
  if (current && !values.some(([v]) => v === current)) values.push([current, words(current)]);
  return [["", "any"], ...values];
}

export function DeviceList({ params }) {
  const [filters, setFilters] = useState(() => Object.fromEntries(FILTERS.map((f) => [f, params.get(f) ?? ""])));
  const [page, setPage] = useState(() => Math.max(1, Number(params.get("page")) || 1));
  const [text, setText] = useState(filters.q);

  // Typing searches once the typing pauses, not at every key.
  useEffect(() => {
    if (text === filters.q) return undefined;
    const timer = setTimeout(() => {
      setFilters((f) => ({ ...f, q: text }));
      setPage(1);
    }, 250);
    return () => clearTimeout(timer);
  }, [text]);

  // The address follows the filters (without a new history entry per key).
  useEffect(() => {
    const q = query({ ...filters, page: page > 1 ? page : "" });
    window.history.replaceState(null, "", `#/devices${q}`);
  }, [filters, page]);

  const set = (name) => (value) => {
    setFilters((f) => ({ ...f, [name]: value }));
    setPage(1);
  };
  const facets = useLive(() => get("/api/v1/fleet"), []).data;
  const { data, error } = useLive(
    () => get(`/api/v1/fleet/devices${query({
      q: filters.q, tag: filters.tag, version: filters.version, state: filters.state,
      last_seen: filters.seen, limit: PAGE, offset: (page - 1) * PAGE,
    })}`),
    [filters, page],
  );
  const seenOptions = SEEN.some(([v]) => v === filters.seen) ? SEEN : [...SEEN, [filters.seen, filters.seen.replace(":", " ")]];
  const first = data ? Math.min(data.total, data.offset + 1) : 0;
  const last = data ? data.offset + data.devices.length : 0;
  const pages = data ? Math.max(1, Math.ceil(data.total / PAGE)) : 1;
  const filtered = FILTERS.some((f) => filters[f]);

  return html`<${Title}>Devices</${Title}>
    <form class="filters" role="search" aria-label="Find devices" onSubmit=${(e) => e.preventDefault()}>
      <div class="field grow">
        <label for="search">Search by name</label>
        <input id="search" type="search" value=${text} placeholder="part of a device name" onInput=${(e) => setText(e.target.value)} />
      </div>
      <${Select} id="tag" label="Tag" value=${filters.tag} options=${options(facets?.by_tag ?? [], filters.tag)} onChange=${set("tag")} />
      <${Select} id="version" label="Version" value=${filters.version} options=${options(facets?.by_version ?? [], filters.version)} onChange=${set("version")} />
      <${Select} id="state" label="State" value=${filters.state} options=${options(facets?.by_state ?? [], filters.state, engineText)} onChange=${set("state")} />
      <${Select} id="seen" label="Last seen" value=${filters.seen} options=${seenOptions} onChange=${set("seen")} />
      ${filtered && html`<button type="button" class="secondary" onClick=${() => { setText(""); setFilters(Object.fromEntries(FILTERS.map((f) => [f, ""]))); setPage(1); }}>Clear filters</button>`}
    </form>
    <${LoadError} error=${error} />
    ${data && html`
      <p class="count" role="status" id="device-total">${data.total === 0
        ? "No device matches."
        : `Showing ${count(first)}–${count(last)} of ${count(data.total)} devices`}</p>
      <${Table} label="Devices" empty=""
        head=${["Name", "Tags", "Version", "State", "Update", "Last seen"]}
        rows=${data.devices.map((d) => html`<tr>
          <td><${DeviceLink} name=${d.name} /></td>
          <td>${d.tags.map((t) => html`<span class="tag">${t}</span>`)}</td>
          <td>${d.status.version ?? "-"}</td>
          <td>${engineText(d.status.state)}</td>
          <td>${d.assignment ? html`<${DeploymentLink} id=${d.assignment.deployment_id}>${d.assignment.version}</${DeploymentLink}>: ${stateText(d.assignment.state)}` : ""}</td>
          <td>${ago(d.status.last_seen)}</td>
        </tr>`)} />
      ${pages > 1 && html`<nav class="pager" aria-label="Pages">
        <button type="button" class="secondary" disabled=${page <= 1} onClick=${() => setPage(page - 1)}>Previous page</button>
        <span>Page ${count(page)} of ${count(pages)}</span>
        <button type="button" class="secondary" disabled=${page >= pages} onClick=${() => setPage(page + 1)}>Next page</button>
      </nav>`}
    `}`;
}
