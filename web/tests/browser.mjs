// What the browser tests share: Debian's Chromium driven by playwright-core
// (which never downloads a browser of its own), a journal of what each
// scenario checked and what the page logged, and waits for what a person
// would see. Used by device_page.mjs and dashboard.mjs.

import { readFileSync } from "node:fs";
import { basename } from "node:path";

import { chromium } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";
// Without the background-networking flags Chromium keeps trying to reach
// Google's hosts, which a closed network refuses.
export const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run",
];

/** What a scenario checked and what the page logged, printed at the end. */
export const journal = [];
export const log = (line) => journal.push(line);

/** The text of an element (`innerText`: what the user sees, "" when hidden). */
export async function textOf(page, selector) {
  return page.locator(selector).first().evaluate((e) => e.innerText);
}

/**
 * Waits up to `waitMs` until `selector`'s text matches `pattern`; fails with
 * what it showed instead. Polls: the page changes by itself (live updates).
 */
export async function waitText(page, selector, pattern, what, waitMs = 30_000) {
  const start = Date.now();
  let shown = "";
  while (Date.now() - start < waitMs) {
    shown = await textOf(page, selector).catch(() => "");
    if (pattern.test(shown)) {
      log(`ok: ${what}: ${shown.split("\n")[0]}`);
      return shown;
    }
    await page.waitForTimeout(100);
  }
  throw new Error(`timed out waiting for ${what}: ${selector} should match ${pattern} but shows:\n${shown}`);
}

/** Drops files on `selector` as a user dragging them from a file manager does. */
export async function dropFiles(page, selector, paths) {
  const files = paths.map((p) => ({ name: basename(p), bytes: [...readFileSync(p)] }));
  await page.locator(selector).evaluate((target, files) => {
    const data = new DataTransfer();
    for (const f of files) data.items.add(new File([new Uint8Array(f.bytes)], f.name));
    for (const type of ["dragenter", "dragover", "drop"]) {
      target.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
    }
  }, files);
}

/** Writes what `page` logs, throws, fails to load or answers with an error into the journal. */
export function watchPage(page) {
  page.on("console", (m) => log(`console.${m.type()}: ${m.text()}${m.location().url ? ` (${m.location().url})` : ""}`));
  page.on("pageerror", (e) => log(`page error: ${e.message}`));
  page.on("requestfailed", (r) => log(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => { if (r.status() >= 400) log(`response ${r.status()}: ${r.request().method()} ${r.url()}`); });
}

/**
 * Runs `scenarios[name](browser)` in a fresh Chromium; prints the journal
 * and `scenario NAME: passed`, or what went wrong with what `page()` (the
 * page in use when it failed) shows, and exits non-zero.
 */
export async function runScenario(scenarios, name, currentPage) {
  const run = scenarios[name];
  if (!run) throw new Error(`unknown scenario ${name}: expected one of ${Object.keys(scenarios).join(", ")}`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    await run(browser);
    const errors = journal.filter((l) => l.startsWith("page error"));
    if (errors.length) throw new Error(`the page's JavaScript threw:\n${errors.join("\n")}`);
    console.log(`${journal.join("\n")}\nscenario ${name}: passed`);
  } catch (e) {
    const page = currentPage();
    const shown = page ? await page.evaluate(() => document.body.innerText).catch((x) => `(page unavailable: ${x})`) : "(no page)";
    console.error(`scenario ${name} failed: ${e.stack ?? e}\n\n--- the page shows ---\n${shown}\n\n--- journal ---\n${journal.join("\n")}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}
