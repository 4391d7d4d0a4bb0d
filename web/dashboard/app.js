// The Airlift fleet dashboard: sign-in, the page frame, the hash router and
// the live connection. Pages live in views/; every one of them reads the
// REST API (api.js) and re-reads it when the server announces a change.
//
// Routes (in the URL's hash, so any static host can serve the files):
//   #/                   overview
//   #/devices?q=&tag=&version=&state=&seen=&page=   device list
//   #/devices/NAME       one device
//   #/firmware           firmware library and upload
//   #/deployments        new deployment and the list
//   #/deployments/ID     one deployment's progress
//   #/rollouts           new staged rollout and the list
//   #/rollouts/ID        one rollout: waves, state, controls, history
//   #/audit              audit log

import { html, render, useEffect, useRef, useState } from "./vendor/preact-htm.js";
import { apiAddress, followChanges, get, onSessionEnded, post, remove } from "./api.js";
import { Live, Notice } from "./ui.js";
import { Overview } from "./views/overview.js";
import { DeviceList } from "./views/devices.js";
import { DevicePage } from "./views/device.js";
import { Firmware } from "./views/firmware.js";
import { Deployments, DeploymentPage } from "./views/deployments.js";
import { Rollouts, RolloutPage } from "./views/rollouts.js";
import { AuditLog } from "./views/audit.js";

const NAV = [
  ["", "Overview"],
  ["devices", "Devices"],
  ["firmware", "Firmware"],
  ["deployments", "Deployments"],
  ["rollouts", "Rollouts"],
  ["audit", "Audit log"],
];

let visits = 0;

/**
 * The route in the hash: its path segments, its query, and a visit number
 * that changes on every navigation (the page then starts afresh, even when
 * a link leads to the address it shows already).
 */
function currentRoute() {
  const hash = window.location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  visits += 1;
  return { parts, params: new URLSearchParams(search), visit: visits };
}

function useRoute() {
  const [route, setRoute] = useState(currentRoute);
  useEffect(() => {
    const changed = () => setRoute(currentRoute());
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return route;
}

function View({ route }) {
  const [section, id] = route.parts;
  switch (section) {
    case undefined:
      return html`<${Overview} />`;
    case "devices":
      return id === undefined ? html`<${DeviceList} params=${route.params} />` : html`<${DevicePage} name=${id} />`;
    case "firmware":
      return html`<${Firmware} />`;
    case "deployments":
      return id === undefined
        ? html`<${Deployments} params=${route.params} />`
        : html`<${DeploymentPage} id=${id} />`;
    case "rollouts":
      return id === undefined ? html`<${Rollouts} />` : html`<${RolloutPage} id=${id} />`;
    case "audit":
      return html`<${AuditLog} />`;
    default:
      return html`<h1>Not found</h1><p>There is no page <code>#/${route.parts.join("/")}</code>. <a href="#/">Go to the overview</a>.</p>`;
  }
}

function SignIn({ onSignedIn, message }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const session = await post("/api/v1/session", { token: token.trim() });
      setToken("");
      onSignedIn(session);
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="signin">
    <form onSubmit=${submit} aria-labelledby="signin-title">
      <h1 id="signin-title">Sign in to Airlift</h1>
      <p>Paste an admin token. The server wrote one to <code>admin.token</code> in its data directory on its first start.</p>
      ${message && html`<${Notice}>${message}</${Notice}>`}
      <label for="token">Admin token</label>
      <input id="token" type="password" autocomplete="current-password" required
        value=${token} onInput=${(e) => setToken(e.target.value)} />
      <button type="submit" disabled=${busy}>${busy ? "Signing in…" : "Sign in"}</button>
      ${error && html`<${Notice} kind="error">${error}</${Notice}>`}
      <p class="muted">Server: ${apiAddress}</p>
    </form>
  </main>`;
}

function Shell({ session, onSignOut }) {
  const route = useRoute();
  const [changes, setChanges] = useState(0);
  const [connected, setConnected] = useState(false);
  useEffect(() => followChanges(() => setChanges((n) => n + 1), setConnected), []);
  const section = route.parts[0] ?? "";
  return html`<${Live.Provider} value=${changes}>
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>Skip to content</a>
    <header>
      <a class="brand" href="#/">Airlift</a>
      <nav aria-label="Main">
        <ul>
          ${NAV.map(([path, label]) => html`<li><a href=${`#/${path}`} aria-current=${section === path ? "page" : undefined}>${label}</a></li>`)}
        </ul>
      </nav>
      <div class="session">
        <span class=${connected ? "live on" : "live"} role="status" title=${connected ? "Pages update as the fleet changes" : "Reconnecting to the server"}>
          ${connected ? "Live" : "Connecting…"}
        </span>
        <span class="who">Signed in as ${session.admin}</span>
        <button type="button" onClick=${onSignOut}>Sign out</button>
      </div>
    </header>
    <main id="main" tabindex="-1"><${View} key=${route.visit} route=${route} /></main>
  </${Live.Provider}>`;
}

function App() {
  // undefined: asking the server; null: signed out; an object: the session.
  const [session, setSession] = useState(undefined);
  const [message, setMessage] = useState(null);
  // Whether the pages are open: a 401 to a request that was still on its
  // way when the user signed out does not say "your session has ended".
  const open = useRef(false);
  const show = (s) => {
    open.current = Boolean(s);
    setSession(s);
  };
  useEffect(() => {
    get("/api/v1/session").then(
      (s) => show(s.signed_in ? s : null),
      (err) => {
        setMessage(err.message);
        show(null);
      },
    );
    return onSessionEnded(() => {
      if (!open.current) return;
      setMessage("Your session has ended. Sign in again.");
      show(null);
    });
  }, []);
  const signOut = async () => {
    // The pages close first, so nothing asks the server once the session is gone.
    show(null);
    setMessage("Signing out…");
    try {
      await remove("/api/v1/session");
      setMessage("You signed out.");
    } catch (err) {
      setMessage(`The server did not confirm the sign-out: ${err.message}`);
    }
  };
  if (session === undefined) return html`<p class="loading" role="status">Loading…</p>`;
  if (session === null) {
    return html`<${SignIn} message=${message} onSignedIn=${(s) => { setMessage(null); show(s); }} />`;
  }
  return html`<${Shell} session=${session} onSignOut=${signOut} />`;
}

render(html`<${App} />`, document.getElementById("app"));
