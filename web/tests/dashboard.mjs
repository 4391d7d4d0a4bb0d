// Drives the fleet dashboard (web/dashboard) in Debian's headless Chromium
// the way a person does: signing in, dropping files, choosing a release and
// a tag, following a deployment, opening a device, signing out. Checks what
// the pages show (never pixels) and saves a screenshot of each page.
//
// Run by crates/airlift-cli/tests/e2e_dashboard_browser.rs, which starts
// `airlift serve` and the simulated fleet and makes the files:
//   node dashboard.mjs SCENARIO   with AIRLIFT_BROWSER_CONFIG='{"url": ..., ...}'
// Scenarios: story (the dashboard served by the server), cross_origin (served
// from another origin, pointed at the API), rollout (a staged rollout of a
// release that crashes on 30% of 20 devices, created and steered in the page).

import assert from "node:assert/strict";
import { basename, join } from "node:path";

import { dropFiles, log, runScenario, textOf, waitText, watchPage } from "./browser.mjs";

/** Long enough for 53 devices to update, or to crash three times each and roll back. */
const FLEET_WAIT_MS = 180_000;

const scenario = process.argv[2];
const config = JSON.parse(process.env.AIRLIFT_BROWSER_CONFIG ?? "{}");

let page;
/** File choosers the page opened, in order (listened for from the start: see open()). */
const choosers = [];
/** Console errors the scenario caused on purpose: [status, method, path] of refused requests. */
const expectedRefusals = [];
const consoleErrors = [];

async function open(browser, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  page = await context.newPage();
  watchPage(page);
  // Listening from the start: playwright intercepts file choosers only once
  // someone listens, and a chooser opened before that is lost.
  page.on("filechooser", (chooser) => choosers.push(chooser));
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push({ text: m.text(), url: m.location().url });
  });
  return context;
}

/** A request the scenario makes the server refuse; the browser logs it as a console error. */
function expectRefusal(status, path) {
  expectedRefusals.push({ status, path });
}

/** Every console error was a refusal the scenario asked for: the dashboard logs none of its own. */
function checkConsole() {
  const unexpected = consoleErrors.filter(({ text, url }) => !expectedRefusals.some(
    (r) => text.includes(`status of ${r.status}`) && new URL(url).pathname === r.path));
  assert.deepEqual(unexpected, [], "errors in the console");
  log(`ok: no console errors but the ${consoleErrors.length} refusals asked for`);
}

async function shoot(name) {
  await page.screenshot({ path: join(config.screenshots, `dashboard-${name}.png`), fullPage: true });
  log(`screenshot: dashboard-${name}.png`);
}

async function heading(pattern) {
  await page.getByRole("heading", { level: 1, name: pattern }).waitFor({ timeout: 30_000 });
}

async function go(link) {
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: link, exact: true }).click();
  await heading(link === "Overview" ? "Overview" : new RegExp(`^${link}`));
}

async function signIn(token) {
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
}

/** The rows of the table labelled `label`, as arrays of cell texts. */
async function rows(label) {
  return page.locator(`.table-wrap[aria-label="${label}"] tbody tr`).evaluateAll((trs) =>
    trs.map((tr) => [...tr.children].map((td) => td.innerText.trim())));
}

/** Waits until `condition()` holds. */
async function until(condition, what, waitMs = 30_000) {
  const start = Date.now();
  while (!(await condition())) {
    if (Date.now() - start > waitMs) throw new Error(`timed out waiting for ${what}`);
    await page.waitForTimeout(50);
  }
  log(`ok: ${what}`);
}

/** Waits until the rows of table `label` satisfy `ok`. */
async function waitRows(label, ok, what, waitMs = 30_000) {
  const start = Date.now();
  let last = [];
  while (Date.now() - start < waitMs) {
    last = await rows(label).catch(() => []);
    if (ok(last)) {
      log(`ok: ${what}`);
      return last;
    }
    await page.waitForTimeout(100);
  }
  throw new Error(`timed out waiting for ${what}; table "${label}" shows ${JSON.stringify(last)}`);
}

/** The value of `name` in the description list `selector` (firmware, status, release details). */
async function field(selector, name) {
  const pairs = await page.locator(`${selector} .kv`).evaluateAll((kvs) =>
    kvs.map((kv) => [kv.querySelector("dt").innerText.trim(), kv.querySelector("dd").innerText.trim()]));
  const pair = pairs.find(([k]) => k === name);
  assert.ok(pair, `${selector} has no "${name}": ${JSON.stringify(pairs)}`);
  return pair[1];
}

/** What the API answers the page now, with the browser's own credentials. */
async function apiStatus(path) {
  return page.evaluate(async ([url]) => (await fetch(url, { credentials: "include" })).status, [`${config.api}${path}`]);
}

/** Records every text `selector` shows from now on. */
async function recordTexts(selector) {
  await page.locator(selector).evaluate((element) => {
    window.recorded = [element.innerText];
    new MutationObserver(() => window.recorded.push(element.innerText))
      .observe(element, { childList: true, characterData: true, subtree: true, attributes: true });
  });
  return () => page.evaluate(() => window.recorded);
}

/** The page has not been loaded again since `markDocument`. */
async function markDocument() {
  await page.evaluate(() => { window.sameDocument = true; });
}
async function assertSameDocument(what) {
  assert.equal(await page.evaluate(() => window.sameDocument), true, `${what} without reloading the page`);
}

async function signInAndCheckSession(context) {
  await page.goto(config.url);
  await heading("Sign in to Airlift");
  assert.equal(await page.getByRole("navigation", { name: "Main" }).count(), 0, "nothing but the sign-in form");

  expectRefusal(401, "/api/v1/session");
  await signIn(`${config.token}x`);
  await waitText(page, "[role=alert]", /not an admin token.*admin\.token/, "a wrong token to be refused");
  await signIn(config.token);
  await heading("Overview");
  await waitText(page, "header", /Signed in as admin/, "the admin's name in the header");

  const cookies = await context.cookies(`${config.api}/api/v1/session`);
  const session = cookies.find((c) => c.name === "airlift_session");
  assert.ok(session, `a session cookie: ${JSON.stringify(cookies)}`);
  assert.equal(session.httpOnly, true, "the session cookie is HttpOnly");
  assert.equal(session.sameSite, "Strict", "the session cookie is SameSite=Strict");
  const visible = await page.evaluate(() => ({
    cookie: document.cookie,
    stored: JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }),
  }));
  assert.ok(!visible.cookie.includes("airlift_session"), "scripts cannot read the session");
  assert.ok(!visible.stored.includes(config.token) && !visible.stored.includes(session.value), "nothing in web storage");
  log("ok: the session is an HttpOnly, SameSite=Strict cookie; nothing in web storage");
  return session;
}

async function signOutAndFindTheApiClosed(context, session) {
  await page.getByRole("button", { name: "Sign out" }).click();
  await heading("Sign in to Airlift");
  await waitText(page, "main", /You signed out/, "the sign-out to be confirmed");
  assert.equal(await page.getByRole("navigation", { name: "Main" }).count(), 0, "the pages are gone");
  expectRefusal(401, "/api/v1/fleet/devices");
  expectRefusal(401, "/api/v1/releases");
  assert.equal(await apiStatus("/api/v1/fleet/devices"), 401, "the API is closed after sign-out");
  // The old cookie, put back, opens nothing either: the session ended on the server.
  await context.addCookies([session]);
  assert.equal(await apiStatus("/api/v1/releases"), 401, "a copy of the old cookie is refused");
  log("ok: after sign-out the API answers 401, also to the old cookie");
}

/** Uploads by dropping `path` on the drop zone; waits for the outcome's heading. */
async function drop(path, outcome) {
  await dropFiles(page, "#drop-zone", [path]);
  return waitText(page, "#upload-status", outcome, `the outcome of dropping ${basename(path)}`);
}

/** The page's heading takes the focus once the page has rendered (an effect after the first paint). */
async function headingHasFocus(what) {
  await page
    .waitForFunction(() => document.activeElement?.tagName === "H1", null, { timeout: 10_000 })
    .catch(async () => assert.fail(`${what}: the focus is on ${await page.evaluate(() => document.activeElement?.tagName)}`));
}

const scenarios = {
  async story(browser) {
    const context = await open(browser);
    const session = await signInAndCheckSession(context);

    // The overview counts the fleet once it has checked in.
    await waitRows("Version", (r) => r.some((c) => c[0] === "1.0.0" && c[1] === "50") && r.some((c) => c[0] === "2.0.0" && c[1] === "3"),
      "50 devices on 1.0.0 and 3 on 2.0.0 in the overview", 60_000);
    assert.match(await textOf(page, ".cards"), /53\s+devices/);
    await shoot("overview");

    // Keyboard only: from the page's heading (which has the focus), back
    // through the header to Firmware, Enter; the new page's heading takes the focus.
    await headingHasFocus("the page's heading has the focus");
    for (let i = 0; i < 10 && (await page.evaluate(() => document.activeElement?.textContent)) !== "Firmware"; i += 1) {
      await page.keyboard.press("Shift+Tab");
    }
    await page.keyboard.press("Enter");
    await heading("Firmware");
    await headingHasFocus("the new page's heading has the focus");
    log("ok: reached Firmware with the keyboard");

    // A real ESP-IDF image, dropped: its parsed details.
    const shown = [];
    await page.locator("#drop-zone").evaluate(() => {
      window.uploadTexts = [];
      new MutationObserver(() => {
        const status = document.getElementById("upload-status");
        if (status) window.uploadTexts.push(status.innerText + (status.querySelector("progress") ? " [progress bar]" : ""));
      }).observe(document.querySelector("main"), { childList: true, subtree: true, characterData: true, attributes: true });
    });
    const real = config.files.real;
    await drop(real, new RegExp(`Stored ${basename(real)} as release #1`));
    shown.push(...(await page.evaluate(() => window.uploadTexts)));
    assert.ok(shown.some((t) => /Uploading hello_world_new\.bin: \d+%|the server is checking/.test(t) && t.includes("[progress bar]")),
      `a progress bar while uploading: ${JSON.stringify(shown.slice(0, 5))}`);
    assert.equal(await field("#release-details", "Chip"), "ESP32");
    assert.equal(await field("#release-details", "Project"), config.real.project);
    assert.equal(await field("#release-details", "Version"), config.real.version);
    assert.equal(await field("#release-details", "Size"), `151.5 KiB (${config.real.size.toLocaleString("en")} bytes)`);
    assert.equal(await field("#release-details", "SHA-256"), config.real.sha256);
    assert.equal(await field("#release-details", "Security version"), "0");
    assert.equal(await field("#release-details", "Signed by"), `the server's key ${config.key_id}`);
    log("ok: the parsed image: chip, project, version, size, SHA-256, security version, signing key");
    await shoot("firmware-uploaded");

    // A foreign file: refused, in words, and nothing stored.
    expectRefusal(422, "/api/v1/releases");
    const refusal = await drop(config.files.foreign, /The server refused holiday-photos\.zip/);
    assert.match(refusal, /This is not an ESP-IDF application image that a device could run\./);
    assert.match(refusal, /The server's reason: not an ESP image: first byte is 0x50, expected 0xe9\./);
    assert.match(refusal, /Nothing was stored\./);
    await shoot("firmware-refused");

    // The good release through the keyboard and the file picker, the crashing one picked too.
    await page.getByRole("button", { name: "Choose a firmware file" }).focus();
    await page.keyboard.press("Enter");
    await until(() => choosers.length === 1, "Enter on the button to open the file chooser");
    await choosers[0].setFiles(config.files.good);
    await waitText(page, "#upload-status", /Stored 2\.0\.0\.bin as release #2/, "the good release");
    await page.getByLabel("Firmware image (.bin)").setInputFiles(config.files.crash);
    await waitText(page, "#upload-status", /Stored 3\.0\.0\.bin as release #3/, "the crashing release");
    const library = await waitRows("Firmware library", (r) => r.length === 3, "three releases in the library");
    assert.deepEqual(library.map((r) => r.slice(0, 2)), [["#3", "3.0.0"], ["#2", "2.0.0"], ["#1", config.real.version]]);

    // Deploy 2.0.0 to tag:lab while the 50 devices are offline (their
    // process stopped): all of them waiting, the 3 that run it apart.
    await go("Deployments");
    const release = await page.getByLabel("Release").locator("option", { hasText: "2.0.0" }).getAttribute("value");
    await page.getByLabel("Release").selectOption(release);
    await page.getByLabel("the devices with a tag").check();
    await page.getByLabel("Tag", { exact: true }).selectOption("lab");
    await waitText(page, "form.deploy", /Reaches 53 devices/, "the reach of tag:lab");
    process.kill(config.fleet_pid, "SIGSTOP");
    await markDocument();
    await page.getByRole("button", { name: "Deploy", exact: true }).click();
    await heading(/^Deployment #1: 2\.0\.0 to tag:lab/);
    const progress = await waitText(page, "#deployment-progress", /0 of 50 devices confirmed \(0%\)/, "nothing confirmed while the devices are offline");
    assert.match(progress, /Waiting for check-in: 50/);
    const unable = await waitText(page, "#unable", /Cannot take this update: 3 devices/, "the devices that cannot take it, apart");
    assert.match(unable, /3 devices already run this release/);
    assert.match(unable, /Not counted in the progress/);
    await shoot("deployment-waiting");

    // The devices come back: the page follows them to 100% by itself.
    const seen = await recordTexts("#deployment-progress");
    process.kill(config.fleet_pid, "SIGCONT");
    await waitText(page, "#deployment-progress", /50 of 50 devices confirmed \(100%\)/, "the deployment at 100%", FLEET_WAIT_MS);
    await assertSameDocument("100% was reached");
    const steps = [...new Set((await seen()).map((t) => t.replace("Progress", "").replace(/\s+/g, " ").trim()))];
    assert.match(steps[0], /^0 of 50 devices confirmed \(0%\)/, "followed from 0%");
    log(`ok: progress followed live: ${steps.join(" | ")}`);
    const done = await textOf(page, "#deployment-progress");
    assert.match(done, /Waiting for check-in: 0/);
    assert.match(await textOf(page, ".meta"), /finished/);
    await shoot("deployment-confirmed");

    // The crashing release: every device tries it, rolls back, and the page says why.
    await go("Deployments");
    const crashing = await page.getByLabel("Release").locator("option", { hasText: "3.0.0" }).getAttribute("value");
    await page.getByLabel("Release").selectOption(crashing);
    await page.getByRole("button", { name: "Deploy", exact: true }).click();
    await heading(/^Deployment #2: 3\.0\.0 to tag:lab/);
    await waitText(page, "#deployment-progress", /Rolled back: 53/, "every device rolled back", FLEET_WAIT_MS);
    const problems = await waitText(page, "#problems", /Failed and rolled back: 53 devices/, "the rolled back devices listed");
    assert.match(problems, /rolled back: 53 because the new firmware did not confirm within its allowed boots, so the device went back to the previous one/);
    const listed = await rows("Failed and rolled back devices");
    assert.equal(listed.length, 53);
    assert.deepEqual(listed[0].slice(0, 2), ["lab-00001", "rolled back"]);
    assert.match(listed[0][2], /did not confirm within its allowed boots/);
    await shoot("deployment-rolled-back");

    // The overview lists them with the reason.
    await go("Overview");
    const recent = await waitRows("Recent failures and rollbacks", (r) => r.length > 0, "recent rollbacks in the overview");
    assert.deepEqual(recent[0].slice(1, 3), ["3.0.0", "rolled back"]);
    assert.match(recent[0][3], /did not confirm within its allowed boots/);
    await waitRows("Version", (r) => r.length === 1 && r[0][0] === "2.0.0" && r[0][1] === "53", "every device back on 2.0.0");
    await shoot("overview-after-rollback");

    // One device's page: its firmware and its history, with reasons.
    await page.locator('.table-wrap[aria-label="Recent failures and rollbacks"] tbody a').first().click();
    await heading(/^Device (lab|spare)-\d{5}$/);
    const name = (await textOf(page, "h1")).replace("Device ", "");
    const fromLab = name.startsWith("lab");
    await waitText(page, "#firmware-info", /2\.0\.0/, "the device back on 2.0.0");
    assert.equal(await field("#firmware-info", "SHA-256"), config.good_sha256);
    assert.equal(await field("#firmware-info", "Security version"), "0");
    assert.match(await field("#firmware-info", "Running slot"), /^ota_[01]$/);
    assert.match(await field("#device-status", "Boot count"), /^\d+$/);
    assert.equal(await field("#device-status", "State"), "idle");
    const history = await waitText(page, "#history", /booted the new firmware attempt 3 of 3/, "the failed boots in the history");
    const entries = await page.locator("#history > li > h3").allInnerTexts();
    assert.deepEqual(entries.map((e) => e.replace(/\s+/g, " ")), fromLab ? ["3.0.0 rolled back", "2.0.0 confirmed"] : ["3.0.0 rolled back", "2.0.0 cannot take it"]);
    assert.match(history, /Why: the new firmware did not confirm within its allowed boots/);
    assert.match(history, /rolled back \(the new firmware did not confirm/);
    assert.match(history, /Deployment #2 to tag:lab/);
    log(`ok: ${name}'s history: ${entries.join(", ")}`);
    await shoot("device");

    // The device list: search and filters run on the server.
    await go("Devices");
    await waitText(page, "#device-total", /Showing 1–50 of 53 devices/, "the first page of 53");
    await page.getByLabel("Search by name").fill("lab-0001");
    await waitText(page, "#device-total", /Showing 1–10 of 10 devices/, "the search for lab-0001");
    assert.deepEqual((await rows("Devices")).map((r) => r[0]), Array.from({ length: 10 }, (_, i) => `lab-000${10 + i}`));
    await page.getByRole("button", { name: "Clear filters" }).click();
    await page.getByLabel("Version").selectOption("2.0.0");
    await waitText(page, "#device-total", /Showing 1–50 of 53 devices/, "the version filter");
    await page.getByRole("button", { name: "Next page" }).click();
    await waitText(page, "#device-total", /Showing 51–53 of 53 devices/, "the second page");
    assert.deepEqual((await rows("Devices")).map((r) => r[0]), ["spare-00001", "spare-00002", "spare-00003"]);
    await page.getByLabel("Last seen").selectOption("never");
    await waitText(page, "#device-total", /No device matches/, "no device that never checked in");
    await shoot("devices");

    // The real image to one device, while the fleet is offline; then cancelled.
    process.kill(config.fleet_pid, "SIGSTOP");
    await go("Deployments");
    const realRelease = await page.getByLabel("Release").locator("option", { hasText: "hello-world" }).getAttribute("value");
    await page.getByLabel("Release").selectOption(realRelease);
    await page.getByLabel("one device").check();
    await page.getByLabel("Device name").fill("lab-00007");
    await page.getByRole("button", { name: "Deploy", exact: true }).click();
    await heading(new RegExp(`^Deployment #3: ${config.real.version} to device:lab-00007`));
    await waitText(page, "#deployment-progress", /0 of 1 device confirmed \(0%\)/, "the one device waiting");
    await page.getByRole("button", { name: "Cancel…" }).click();
    await page.getByRole("button", { name: "Cancel the deployment" }).click();
    await waitText(page, ".meta", /^cancelled/, "the deployment cancelled");
    assert.match(await textOf(page, "#deployment-progress"), /Cancelled: 1/);
    assert.equal(await page.getByRole("button", { name: "Cancel…" }).count(), 0, "nothing left to cancel");
    await waitRows("Devices of this deployment", (r) => r.length === 1 && r[0][1] === "cancelled" && r[0][2] === "the deployment was cancelled",
      "the device's assignment cancelled, with why");
    process.kill(config.fleet_pid, "SIGCONT");
    await shoot("deployment-cancelled");

    // The audit log: who did what, from where.
    await go("Audit log");
    const audit = await waitRows("Audit log", (r) => r.length >= 6, "the audit log");
    const actions = audit.map((r) => `${r[1]} ${r[2]} ${r[3]} ${r[4]}`);
    for (const expected of [/admin cancelled a deployment deployment:3 done, from the dashboard/, /admin created a deployment deployment:2 done, from the dashboard/, /admin uploaded firmware release:1 done, from the dashboard/, /admin signed in to the dashboard session done/]) {
      assert.ok(actions.some((a) => expected.test(a)), `${expected} in ${JSON.stringify(actions)}`);
    }
    assert.ok(actions.some((a) => /admin uploaded firmware \/api\/v1\/releases refused \(422\), from the dashboard/.test(a)),
      `the refused upload in the audit log: ${JSON.stringify(actions)}`);
    await shoot("audit");

    // At phone width every page fits the screen (tables scroll by themselves).
    await page.setViewportSize({ width: 390, height: 844 });
    for (const [link, file] of [["Overview", "overview"], ["Devices", "devices"], ["Firmware", "firmware"], ["Deployments", "deployments"], ["Audit log", "audit"]]) {
      await go(link);
      await page.waitForFunction(() => !document.querySelector("main").innerText.includes("Loading…"));
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${link} is ${overflow} px wider than a 390 px screen`);
      await shoot(`phone-${file}`);
    }
    log("ok: every page fits a 390 px wide screen");
    await page.setViewportSize({ width: 1280, height: 900 });

    checkConsole();
    await signOutAndFindTheApiClosed(context, session);
    await shoot("signed-out");
  },

  async rollout(browser) {
    const context = await open(browser);
    await signInAndCheckSession(context);
    const n = config.devices;
    await waitRows("Version", (r) => r.some((c) => c[0] === "1.0.0" && c[1] === String(n)), `${n} devices on 1.0.0`, 60_000);

    // The plan, in the page: two waves of half the fleet each, pause at the first failure.
    await go("Rollouts");
    const release = await page.getByLabel("Release").locator("option", { hasText: "2.0.0" }).getAttribute("value");
    await page.getByLabel("Release").selectOption(release);
    await page.getByLabel("the devices with a tag").check();
    await page.getByLabel("Tag", { exact: true }).selectOption("canary");
    await page.getByLabel("Waves", { exact: true }).fill("50%, 100%");
    await page.getByLabel("Soak between waves").fill("1h");
    await page.getByLabel("Pause at failures").fill("1");
    await waitText(page, "#rollout-reach", /Reaches 20 devices now; waves of 10, 10 devices/, "the waves previewed for tag:canary");
    await shoot("rollout-new");
    // The devices wait (their process stopped) until the page shows wave 1
    // running: what follows it sees come live.
    process.kill(config.fleet_pid, "SIGSTOP");
    await markDocument();
    await page.getByRole("button", { name: "Start the rollout" }).click();
    await heading(/^Rollout #1: 2\.0\.0 to tag:canary/);

    // Wave 1 opens; wave 2 waits.
    const opened = await waitRows("Waves", (r) => r.length === 2 && r[0][2] === "open" && r[1][2] === "not open", "wave 1 open, wave 2 not");
    assert.deepEqual(opened.map((r) => r[1]), ["10 of 20 (50%)", "20 of 20 (100%)"], "each wave's reach");
    assert.match(await textOf(page, "#rollout-plan"), /Pauses at\s+1 failure \(/);
    await shoot("rollout-wave-1");

    // The crashing release pauses it by itself, and the page says why, with the numbers.
    const seen = await recordTexts("#rollout-meta");
    process.kill(config.fleet_pid, "SIGCONT");
    const paused = await waitText(page, "#pause-reason", /Paused by the failure threshold/, "the rollout paused by the failure threshold", FLEET_WAIT_MS);
    await assertSameDocument("the pause showed");
    assert.match(paused, /\d+ failures? \(rolled_back \d+\) in wave 1 reached the failure threshold of 1 \(1 of 10 devices\)/);
    assert.match(paused, /Open waves\s+wave 1: 10 devices/);
    assert.match(paused, /Failures\s+\d+ \(rolled back \d+\)/);
    assert.match(paused, /Failure threshold\s+1: 1 device/);
    assert.ok((await seen()).some((t) => /^running/.test(t)), "the page showed it running before it paused");
    assert.match(await textOf(page, "#rollout-meta"), /^paused wave 1 of 2 open/);
    const closed = (await rows("Waves"))[1];
    assert.deepEqual(closed.slice(2, 7), ["not open", "0", "0", "0", "10"], "wave 2: not open, nobody offered the release");
    const problems = await waitText(page, "#problems", /Failed and rolled back/, "the failed devices listed");
    assert.match(problems, /rolled back: \d+ because the new firmware did not confirm within its allowed boots/);
    await shoot("rollout-paused");

    // Devices that were updating finish while it is paused; then resume.
    await waitRows("Waves", (r) => r[0][5] === "0", "wave 1's devices all done", FLEET_WAIT_MS);
    await page.getByRole("button", { name: "Resume" }).click();
    await waitText(page, "#rollout-meta", /^running/, "the rollout resumed");
    assert.match(await textOf(page, "#rollout-state"), /Wave 2 opens once 95% of the open waves' devices confirmed \(now \d of 10\)/);

    // An operator's pause names the operator.
    await page.getByRole("button", { name: "Pause" }).click();
    const byAdmin = await waitText(page, "#pause-reason", /Paused by admin/, "the rollout paused by its operator");
    assert.match(byAdmin, /admin paused it in wave 1/);
    await page.getByRole("button", { name: "Resume" }).click();
    await waitText(page, "#rollout-meta", /^running/, "the rollout resumed again");

    // Wave 2 opened by hand: its crashing devices pause it again, counting only new failures.
    await page.getByRole("button", { name: "Open wave 2 now" }).click();
    await waitRows("Waves", (r) => r[1][2] === "open", "wave 2 open");
    const again = await waitText(page, "#pause-reason", /Paused by the failure threshold/, "wave 2's failures pause it again", FLEET_WAIT_MS);
    assert.match(again, /beyond the \d+ accepted at resume \(rolled_back \d+\) in waves 1-2 reached the failure threshold of 1 \(1 of 20 devices\)/);
    assert.match(again, /Accepted at a resume\s+\d+/);
    await shoot("rollout-paused-again");

    // Cancelled from the page.
    await page.getByRole("button", { name: "Cancel…" }).click();
    await page.getByRole("button", { name: "Cancel the rollout" }).click();
    await waitText(page, "#rollout-meta", /^cancelled/, "the rollout cancelled");
    assert.equal(await page.getByRole("button", { name: "Resume" }).count(), 0, "nothing left to steer");
    const history = (await rows("Rollout history")).map((r) => `${r[1]}: ${r[2]}`).reverse();
    for (const [i, expected] of [
      /^admin: Created: release #2 to tag:canary$/,
      /^admin: Started: 20 devices \(0 cannot take it, 0 held back\), waves of 10, 20$/,
      /^scheduler: Paused: \d+ failures? \(rolled_back \d+\) in wave 1 reached the failure threshold/,
      /^admin: Resumed, accepting \d+ failures? so far$/,
      /^admin: Paused by admin$/,
      /^admin: Resumed, accepting \d+ failures? so far$/,
      /^admin: Wave 2 opened by hand/,
      /^scheduler: Paused: .* in waves 1-2 reached the failure threshold/,
      /^admin: Cancelled$/,
    ].entries()) {
      assert.match(history[i] ?? "", expected, `history entry ${i + 1}: ${JSON.stringify(history)}`);
    }
    log(`ok: the history: ${history.length} entries`);
    await shoot("rollout-cancelled");

    // Its deployment's page says which rollout it belongs to.
    await page.locator("#rollout-meta a", { hasText: "deployment #1" }).click();
    await heading(/^Deployment #1: 2\.0\.0 to tag:canary/);
    await waitText(page, "#staged-by", /Staged rollout #1\s+cancelled wave 2 of 2 open/, "the deployment names its rollout");

    // A second rollout holds back the devices that failed this release once (the penalty box).
    await go("Rollouts");
    await waitRows("Rollouts", (r) => r.length === 1 && r[0][3] === "cancelled", "the first rollout in the list");
    await page.getByLabel("Release").selectOption(release);
    await page.getByLabel("Tag", { exact: true }).selectOption("canary");
    await page.getByLabel("Waves", { exact: true }).fill("100%");
    await page.getByLabel("Hold back after failures").fill("1");
    await page.getByRole("button", { name: "Start the rollout" }).click();
    await heading(/^Rollout #2: 2\.0\.0 to tag:canary/);
    const held = await waitText(page, "#held-back", /Held back: \d+ devices?/, "the penalty box's devices");
    assert.match(held, /they failed this release before/);
    assert.match(await textOf(page, "#rollout-plan"), /Penalty box\s+holds back devices that failed this release 1 time$/m);
    const heldRows = await rows("Held back devices");
    assert.ok(heldRows.length > 0 && heldRows.every((r) => /^canary-\d{5}$/.test(r[0]) && r[1] === "1 time"), JSON.stringify(heldRows));
    // The others confirmed 2.0.0 in the first rollout: nothing is left to do.
    await waitText(page, "#rollout-state", /Finished at once: none of its 20 devices could take the release/, "the second rollout finished at once");
    await shoot("rollout-held-back");

    await page.setViewportSize({ width: 390, height: 844 });
    for (const [where, file] of [["#/rollouts", "rollouts"], ["#/rollouts/1", "rollout"]]) {
      await page.evaluate((hash) => { window.location.hash = hash; }, where);
      await page.waitForFunction(() => !document.querySelector("main").innerText.includes("Loading…"));
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${where} is ${overflow} px wider than a 390 px screen`);
      await shoot(`phone-${file}`);
    }
    checkConsole();
  },

  async cross_origin(browser) {
    const context = await open(browser);
    const session = await signInAndCheckSession(context);
    assert.notEqual(new URL(page.url()).origin, new URL(config.api).origin, "the page is not served by the API");
    await waitText(page, ".cards", /2\s+devices/, "the fleet of the API the page points at");
    await waitText(page, "header", /Live/, "the change stream connected across origins");
    await shoot("cross-origin-overview");
    await go("Firmware");
    await drop(config.files.real, /Stored hello_world_new\.bin as release #1/);
    assert.equal(await field("#release-details", "SHA-256"), config.real.sha256);
    await go("Devices");
    await waitText(page, "#device-total", /Showing 1–2 of 2 devices/, "the devices");
    assert.deepEqual((await rows("Devices")).map((r) => r[0]), ["north", "south"]);
    checkConsole();
    await signOutAndFindTheApiClosed(context, session);
  },
};

await runScenario(scenarios, scenario, () => page);
