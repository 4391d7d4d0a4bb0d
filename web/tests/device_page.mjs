// Drives the device page (web/device/index.html, served by `airlift device run
// --listen`) in Debian's headless Chromium the way a user does: typing the
// password, picking files, clicking buttons; and checks what the page shows.
//
// Run by crates/airlift-cli/tests/e2e_device_browser.rs, which starts the
// agent and makes the files:
//   node device_page.mjs SCENARIO   with AIRLIFT_BROWSER_CONFIG='{"url": ..., ...}'
// Exits non-zero with what the page showed and its console when a check fails.

import assert from "node:assert/strict";

import { dropFiles, log, runScenario, textOf, waitText, watchPage } from "./browser.mjs";

/** How long one expectation may take: a reboot and a health check fit easily. */
const WAIT_MS = 30_000;

const scenario = process.argv[2];
const config = JSON.parse(process.env.AIRLIFT_BROWSER_CONFIG ?? "{}");

/** The cells of `table`'s rows as arrays of strings. */
async function cells(page, table) {
  return page.locator(`#${table} tr`).evaluateAll((rows) =>
    rows.map((r) => [...r.children].map((c) => c.innerText.trim())));
}

/** The value next to `key` in a two-column table such as #running or #engine. */
async function field(page, table, key) {
  const row = (await cells(page, table)).find((r) => r[0] === key);
  assert.ok(row, `#${table} has no row "${key}"`);
  return row[1];
}

/** Waits until the row `key` of `table` reads `expected` (a string or a RegExp). */
async function waitField(page, table, key, expected) {
  const matches = (v) => (expected instanceof RegExp ? expected.test(v) : v === expected);
  const start = Date.now();
  let last;
  while (Date.now() - start < WAIT_MS) {
    const row = (await cells(page, table)).find((r) => r[0] === key);
    last = row ? row[1] : undefined;
    if (last !== undefined && matches(last)) {
      log(`ok: #${table} ${key} = ${last}`);
      return last;
    }
    await page.waitForTimeout(100);
  }
  throw new Error(`timed out waiting for #${table} "${key}" to be ${expected}; it is ${JSON.stringify(last)}`);
}

/** What the API answers to a request from the page without the password, or with `bearer`. */
async function apiStatusCode(page, path, method, bearer) {
  return page.evaluate(async ([path, method, bearer]) => {
    const headers = bearer ? { Authorization: "Bearer " + bearer } : {};
    const response = await fetch(path, { method, headers, credentials: "omit" });
    return response.status;
  }, [path, method, bearer]);
}

async function unlock(page, password) {
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Unlock" }).click();
}

async function openUnlocked(page) {
  await page.goto(config.url);
  await unlock(page, config.password);
  await waitField(page, "running", "version", config.old);
}

async function upload(page, image, manifest) {
  await page.getByLabel("Image (.bin)").setInputFiles(image);
  await page.getByLabel(/Signed manifest/).setInputFiles(manifest);
  await page.getByRole("button", { name: "Upload and install" }).click();
}

/** Records every text #message shows, to check what the user saw in passing. */
async function recordMessages(page) {
  await page.evaluate(() => {
    window.messages = [];
    const message = document.getElementById("message");
    new MutationObserver(() => window.messages.push(message.textContent))
      .observe(message, { childList: true, characterData: true, subtree: true });
  });
  return () => page.evaluate(() => window.messages);
}

/** Number of boots the page shows, after it changed from `before` (when given). */
async function waitBoots(page, before) {
  const value = await waitField(page, "running", "boots", new RegExp(`^(?!${before ?? -1}$)\\d+$`));
  return Number(value);
}

const scenarios = {
  // Locked until the password is typed; then the whole status.
  async password(page) {
    await page.goto(config.url);
    assert.equal(await page.locator("#login").isVisible(), true, "the password form is shown");
    assert.equal(await page.locator("#device").isVisible(), false, "no status without the password");
    assert.equal(await textOf(page, "#running"), "", "no firmware details without the password");
    assert.equal(await apiStatusCode(page, "/favicon.ico", "GET"), 404, "an unknown path is not a password challenge");
    for (const [path, method] of [["/api/status", "GET"], ["/api/reboot", "POST"], ["/api/upload", "POST"]]) {
      assert.equal(await apiStatusCode(page, path, method), 401, `${method} ${path} without the password`);
      assert.equal(await apiStatusCode(page, path, method, "guess"), 401, `${method} ${path} with a wrong password`);
    }

    await unlock(page, "guess");
    await waitText(page, "#message", /wrong password/, "the wrong password to be refused");
    assert.equal(await page.locator("#device").isVisible(), false, "still locked after a wrong password");
    assert.equal(await textOf(page, "#running"), "", "still no firmware details");

    await unlock(page, config.password);
    await waitField(page, "running", "version", config.old);
    assert.equal(await page.locator("#login").isVisible(), false, "the password form is gone");
    assert.equal(await textOf(page, "#message"), "", "no error once unlocked");
    assert.equal(await field(page, "running", "slot"), "ota_0");
    assert.equal(await field(page, "running", "confirmed"), "yes");
    assert.equal(await field(page, "running", "sha256"), config.old_sha256);
    assert.equal(await field(page, "running", "boots"), "1");
    assert.match(await textOf(page, "#state"), /offline/, "the header says the device runs offline");
    assert.equal(await textOf(page, "#name"), config.name);

    const slots = await cells(page, "slots");
    const slot = (name) => slots.find((r) => r[0] === name) ?? assert.fail(`no slot ${name} in ${JSON.stringify(slots)}`);
    assert.match(slot("ota_0")[1], new RegExp(`^${config.old} ${config.old_sha256.slice(0, 16)}$`));
    assert.equal(slot("ota_0")[2], "valid");
    assert.equal(slot("ota_1")[1], "empty");
    const otadata = await cells(page, "otadata");
    assert.deepEqual(otadata.slice(1).map((r) => r[0]), ["copy 0 (active)", "copy 1", "selects"], JSON.stringify(otadata));
    assert.deepEqual(otadata[1].slice(1), ["1", "VALID"]);
    assert.deepEqual(otadata[2].slice(1), ["erased", "UNDEFINED"]);
    assert.equal(otadata[3][1], "ota_0");
    assert.equal(await field(page, "engine", "boot counter"), "0 of 3");
    assert.equal(await field(page, "engine", "image on trial"), "none");
    assert.equal(await field(page, "engine", "trusted keys"), config.key_id);
    const bootlog = await cells(page, "bootlog");
    assert.equal(bootlog.length, 2, `one boot in the log: ${JSON.stringify(bootlog)}`);
    assert.deepEqual(bootlog[1].slice(1), ["ota_0", "confirmed", config.old]);
    assert.deepEqual(await cells(page, "history"), [["when", "version", "from", "result"]], "no updates yet");

    // The password lasts as long as the tab: a reload stays unlocked, Lock locks.
    await page.reload();
    await waitField(page, "running", "version", config.old);
    await page.getByRole("button", { name: "Lock" }).click();
    assert.equal(await page.locator("#login").isVisible(), true, "locked again");
    assert.equal(await textOf(page, "#running"), "", "the status is cleared when locked");
    await page.reload();
    await page.waitForTimeout(500);
    assert.equal(await page.locator("#device").isVisible(), false, "still locked after a reload");
  },

  // Bad images and bad signatures are refused with the reason; the old firmware keeps running.
  async refusals(page) {
    await openUnlocked(page);
    const refused = [
      [config.files.truncated, config.files.good_manifest, /refused, nothing installed: verification: image truncated: received \d+ bytes, the manifest announced \d+/],
      [config.files.foreign, config.files.good_manifest, /refused, nothing installed: verification: .*(checksum|not an ESP image|magic)/i],
      [config.files.other_image, config.files.good_manifest, /refused, nothing installed: verification: image sha-256 differs from the one in the signed manifest/],
      [config.files.good, config.files.stranger_manifest, /refused, nothing installed: signature: manifest signed by unknown key [0-9a-f]+: not among the device's trusted keys/],
      [config.files.good, config.files.forged_manifest, /refused, nothing installed: signature: .*signature/i],
      [config.files.good, config.files.good, /refused, nothing installed: signature: X-Airlift-Manifest holds \d+ bytes .*not the image/],
    ];
    for (const [image, manifest, message] of refused) {
      await page.evaluate(() => { document.getElementById("message").textContent = ""; });
      await upload(page, image, manifest);
      await waitText(page, "#message", message, `the refusal of ${image} with ${manifest}`);
      assert.equal(await field(page, "running", "version"), config.old);
      assert.equal(await field(page, "running", "confirmed"), "yes");
    }
    // The refusals that got as far as the engine are in the history, newest first.
    await waitText(page, "#history", new RegExp([
      "signature", "signature", "verification", "verification", "verification",
    ].map((reason) => `${config.new}\\s+upload\\s+failed \\(${reason}\\)`).join("[^]*")), "the refusals in the history");
    const rows = (await cells(page, "history")).slice(1);
    assert.equal(rows.length, 5, `five attempts in the history: ${JSON.stringify(rows)}`);
    assert.equal(await field(page, "running", "boots"), "1", "no reboot");
    assert.equal(await field(page, "engine", "image on trial"), "none");
    const otadata = await cells(page, "otadata");
    assert.equal(otadata.at(-1)[1], "ota_0", "otadata still selects the old slot");
  },

  // A good signed image installs, the device reboots into it and confirms it.
  async install(page) {
    await openUnlocked(page);
    // Both files dropped at once, manifest first: the page sorts them out.
    await dropFiles(page, "#upload", [config.files.good_manifest, config.files.good]);
    await waitText(page, "#message", /^ready to install v2\.bin with v2\.manifest$/, "the dropped files");
    const messages = await recordMessages(page);
    await page.getByRole("button", { name: "Upload and install" }).click();
    await waitText(page, "#message", new RegExp(`installed ${config.new}: rebooting into it`), "the install");
    const seen = await messages();
    assert.ok(seen.includes("uploaded: the device is writing and verifying the image…"), `the page told the upload finished: ${JSON.stringify(seen)}`);
    await waitField(page, "running", "version", config.new);
    assert.equal(await field(page, "running", "slot"), "ota_1");
    await waitField(page, "running", "confirmed", "yes");
    await waitText(page, "#history", new RegExp(`${config.new}\\s+upload\\s+confirmed`), "the update in the history");
    assert.equal(await field(page, "running", "sha256"), config.new_sha256);
    assert.equal(await field(page, "engine", "image on trial"), "none");
    assert.equal(await field(page, "engine", "boot counter"), "0 of 3");
    const slots = await cells(page, "slots");
    assert.deepEqual(slots.find((r) => r[0] === "ota_1"), ["ota_1", `${config.new} ${config.new_sha256.slice(0, 16)}`, "valid"]);
    // The log records boots: the new image's first boot was on trial.
    const bootlog = (await cells(page, "bootlog")).slice(1).map((r) => r.slice(1).join(" "));
    assert.deepEqual(bootlog, [`ota_1 trial #1 ${config.new}`, `ota_0 confirmed ${config.old}`]);
    assert.equal(await textOf(page, "#message").then((m) => m.startsWith("the device does not answer")), false);
  },

  // Pull and install from URLs: a missing file is refused with the reason, a good pair installs.
  async pull(page) {
    await openUnlocked(page);
    const pull = async (image, manifest) => {
      await page.getByLabel("Image URL").fill(image);
      await page.getByLabel("Manifest URL").fill(manifest);
      await page.getByRole("button", { name: "Pull and install" }).click();
    };
    await pull(`${config.files_url}/fw/missing.bin`, `${config.files_url}/fw/v2.manifest`);
    await waitText(page, "#message", /^refused, nothing installed: download: could not fetch .*missing\.bin/, "the missing image to be refused");
    assert.equal(await field(page, "running", "version"), config.old);
    await pull(`${config.files_url}/fw/v2.bin`, `${config.files_url}/fw/v2.manifest`);
    await waitText(page, "#message", new RegExp(`^installed ${config.new}: rebooting into it$`), "the pull");
    await waitField(page, "running", "version", config.new);
    await waitField(page, "running", "confirmed", "yes");
    await waitText(page, "#history", new RegExp(`${config.new}\\s+pull\\s+confirmed`), "the pull in the history");
    assert.equal(await field(page, "running", "sha256"), config.new_sha256);
  },

  // The Reboot button resets the device, which comes back on the same firmware.
  async reboot(page) {
    await openUnlocked(page);
    const boots = Number(await field(page, "running", "boots"));
    await page.getByRole("button", { name: "Reboot" }).click();
    await waitText(page, "#message", /^rebooting$/, "the reboot to be accepted");
    assert.equal(await waitBoots(page, boots), boots + 1, "one more boot");
    assert.equal(await field(page, "running", "version"), config.old);
    assert.equal(await field(page, "running", "confirmed"), "yes");
    const bootlog = (await cells(page, "bootlog")).slice(1).map((r) => r.slice(1).join(" "));
    assert.deepEqual(bootlog, [`ota_0 confirmed ${config.old}`, `ota_0 confirmed ${config.old}`]);
  },

  // An image that never confirms runs on trial, the watchdog resets it, and
  // after its third boot the device rolls back by itself; the page tells.
  async rollback(page) {
    await openUnlocked(page);
    await upload(page, config.files.good, config.files.good_manifest);
    await waitText(page, "#message", new RegExp(`installed ${config.new}`), "the install");
    await waitField(page, "running", "version", config.new);
    await waitField(page, "running", "confirmed", /^on trial, attempt [123]$/);
    assert.match(await field(page, "engine", "boot counter"), /^[123] of 3$/);
    assert.equal(await field(page, "engine", "image on trial"), "ota_1");
    assert.match(await textOf(page, "#history"), new RegExp(`now\\s+${config.new}\\s+upload\\s+in progress`));

    await waitField(page, "running", "version", config.old);
    assert.equal(await field(page, "running", "confirmed"), "yes");
    assert.equal(await field(page, "running", "slot"), "ota_0");
    await waitText(page, "#history", new RegExp(`${config.new}\\s+upload\\s+rolled_back \\(boot_failed\\)`), "the rollback in the history");
    assert.equal(await field(page, "engine", "image on trial"), "none");
    assert.equal(await field(page, "engine", "boot counter"), "0 of 3");
    const bootlog = (await cells(page, "bootlog")).slice(1).map((r) => r.slice(1).join(" "));
    assert.deepEqual(bootlog, [
      `ota_0 confirmed ${config.old}`,
      `ota_1 rolled_back #3 ${config.new}`,
      `ota_1 trial #3 ${config.new}`,
      `ota_1 trial #2 ${config.new}`,
      `ota_1 trial #1 ${config.new}`,
      `ota_0 confirmed ${config.old}`,
    ]);
  },
};

let page;
const withPage = Object.fromEntries(Object.entries(scenarios).map(([name, run]) => [name, async (browser) => {
  page = await browser.newPage();
  watchPage(page);
  await run(page);
}]));
await runScenario(withPage, scenario, () => page);
