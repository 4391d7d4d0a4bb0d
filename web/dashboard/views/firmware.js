// The firmware library: drop a .bin (or pick it) to upload it with a
// progress bar; the server parses and verifies it and answers what it
// found (chip, project, version, size, SHA-256, security version, which
// key signed it) or why it refused the file, which is shown in plain words.

import { useRef, useState } from "../vendor/preact-htm.js";
import { ApiError, get, remove, uploadFirmware } from "../api.js";
import { LoadError, Notice, Table, Title, ago, chipName, html, size, useLive } from "../ui.js";

/** What the server's refusal codes mean for the person who uploaded the file. */
const REFUSALS = {
  invalid_image: "This is not an ESP-IDF application image that a device could run.",
  too_large: "The file is larger than the server accepts.",
  manifest_mismatch: "The signed manifest does not describe this image.",
  bad_manifest: "The signed manifest could not be read.",
  conflict: "The library already holds this image with another manifest.",
};

function Details({ release }) {
  const rows = [
    ["Chip", chipName(release.chip_id)],
    ["Project", release.project],
    ["Version", release.version],
    ["Size", `${size(release.size)} (${release.size.toLocaleString("en")} bytes)`],
    ["SHA-256", html`<code class="hash">${release.sha256}</code>`],
    ["Security version", release.security_version],
    ["Signed by", release.signed_by_server
      ? html`the server's key <code>${release.key_id}</code>`
      : html`offline key <code>${release.key_id}</code> (the server cannot sign for it)`],
  ];
  return html`<dl id="release-details">${rows.map(([k, v]) => html`<div class="kv"><dt>${k}</dt><dd>${v}</dd></div>`)}</dl>`;
}

function Upload({ onUploaded }) {
  const input = useRef(null);
  const [manifest, setManifest] = useState(null);
  const [over, setOver] = useState(false);
  const [upload, setUpload] = useState(null);

  const start = async (file) => {
    if (!file) return;
    setUpload({ file, sent: 0, total: file.size, phase: "sending" });
    try {
      const answer = await uploadFirmware(file, manifest, (sent, total) =>
        setUpload({ file, sent, total, phase: sent >= total ? "checking" : "sending" }));
      setUpload({ file, phase: "done", ...answer });
      onUploaded();
    } catch (error) {
      setUpload({ file, phase: "refused", error });
    }
  };
  const drop = (e) => {
    e.preventDefault();
    setOver(false);
    start(e.dataTransfer.files[0]);
  };
  const busy = upload && (upload.phase === "sending" || upload.phase === "checking");
  const percent = upload && upload.total ? Math.floor((upload.sent * 100) / upload.total) : 0;

  return html`<section aria-labelledby="upload-title">
    <h2 id="upload-title">Upload firmware</h2>
    <div id="drop-zone" class=${over ? "drop over" : "drop"}
      onDragEnter=${(e) => { e.preventDefault(); setOver(true); }}
      onDragOver=${(e) => e.preventDefault()}
      onDragLeave=${() => setOver(false)}
      onDrop=${drop}>
      <p>Drop an ESP-IDF application image (<code>.bin</code>) here, or</p>
      <button type="button" disabled=${busy} onClick=${() => input.current.click()}>Choose a firmware file</button>
      <input ref=${input} id="firmware-file" type="file" accept=".bin,application/octet-stream" class="visually-hidden" tabindex="-1"
        aria-label="Firmware image (.bin)" onChange=${(e) => { start(e.target.files[0]); e.target.value = ""; }} />
      <p class="muted">
        <label for="manifest-file">Signed offline with <code>airlift release sign</code>? Add its manifest first: </label>
        <input id="manifest-file" type="file" onChange=${(e) => setManifest(e.target.files[0] ?? null)} />
      </p>
    </div>
    ${upload && html`<div id="upload-status" class="upload" aria-live="polite">
      ${busy && html`
        <label for="upload-progress">${upload.phase === "sending"
          ? `Uploading ${upload.file.name}: ${percent}% (${size(upload.sent)} of ${size(upload.total)})`
          : `Uploaded ${upload.file.name}; the server is checking the image…`}</label>
        <progress id="upload-progress" max=${upload.total || 1} value=${upload.sent}></progress>`}
      ${upload.phase === "done" && html`<${Notice} kind="ok">
        <h3>${upload.created
          ? `Stored ${upload.file.name} as release #${upload.release.id}`
          : `${upload.file.name} is already in the library as release #${upload.release.id}`}</h3>
        <${Details} release=${upload.release} />
        <p><a href=${`#/deployments?release=${upload.release.id}`}>Deploy release #${upload.release.id}</a></p>
      </${Notice}>`}
      ${upload.phase === "refused" && html`<${Notice} kind="error">
        <h3>The server refused ${upload.file.name}</h3>
        <p>${REFUSALS[upload.error.code] ?? "The upload did not go through."}</p>
        <p>${upload.error instanceof ApiError && upload.error.status ? "The server's reason: " : ""}${upload.error.message}.</p>
        <p>Nothing was stored.</p>
      </${Notice}>`}
    </div>`}
  </section>`;
}

function Library({ releases, onDeleted }) {
  const [asking, setAsking] = useState(null);
  const [message, setMessage] = useState(null);
  const del = async (release) => {
    setAsking(null);
    try {
      await remove(`/api/v1/releases/${release.id}`);
      setMessage({ kind: "ok", text: `Deleted release #${release.id} (${release.version}).` });
      onDeleted();
    } catch (error) {
      setMessage({ kind: "error", text: `Release #${release.id} was not deleted: ${error.message}.` });
    }
  };
  return html`<section aria-labelledby="library-title">
    <h2 id="library-title">Library</h2>
    ${message && html`<${Notice} kind=${message.kind}>${message.text}</${Notice}>`}
    <${Table} label="Firmware library" empty="No firmware yet: upload a .bin above."
      head=${["Release", "Version", "Project", "Chip", "Size", "SHA-256", "Signature", "Uploaded", ""]}
      rows=${releases.map((r) => html`<tr>
        <td>#${r.id}</td>
        <td>${r.version}</td>
        <td>${r.project}</td>
        <td>${chipName(r.chip_id)}</td>
        <td>${size(r.size)}</td>
        <td><code title=${r.sha256}>${r.sha256.slice(0, 12)}…</code></td>
        <td>${r.signed_by_server ? "server" : "offline"}</td>
        <td>${ago(r.created_at)}</td>
        <td class="actions">
          <a href=${`#/deployments?release=${r.id}`}>Deploy</a>
          ${asking === r.id
            ? html`<button type="button" class="danger" onClick=${() => del(r)}>Delete #${r.id}</button>
                <button type="button" class="secondary" onClick=${() => setAsking(null)}>Keep</button>`
            : html`<button type="button" class="secondary" onClick=${() => setAsking(r.id)}>Delete…</button>`}
        </td>
      </tr>`)} />
  </section>`;
}

export function Firmware() {
  const [reload, setReload] = useState(0);
  const { data, error } = useLive(() => get("/api/v1/releases"), [reload]);
  const again = () => setReload((n) => n + 1);
  return html`<${Title}>Firmware</${Title}>
    <${Upload} onUploaded=${again} />
    <${LoadError} error=${error} />
    ${data && html`<${Library} releases=${data} onDeleted=${again} />`}`;
}
