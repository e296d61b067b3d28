// Launches Debian's Chromium headless through playwright-core, for the console's browser
// tests. OFE_TEST_PLAYWRIGHT names the folder holding node_modules/playwright-core, and
// OFE_TEST_CHROMIUM the browser (it cannot be downloaded here).
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.OFE_TEST_PLAYWRIGHT, "index.js"));
const { chromium } = require("playwright-core");

export async function launch() {
  return chromium.launch({
    executablePath: process.env.OFE_TEST_CHROMIUM,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

// A new page that accepts every confirmation and collects the page's script errors.
export async function open(browser, url, errors, viewport = { width: 1400, height: 760 }) {
  const page = await browser.newPage({ viewport });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("dialog", (dialog) => dialog.accept());
  await page.goto(url);
  return page;
}

// Waits for `check` (run in the page with `arg`) to hold; on timeout, says `what` and shows
// the panel, so a failure tells what the page showed.
export async function until(page, what, check, arg, timeout = 30000) {
  try {
    await page.waitForFunction(check, arg, { timeout, polling: 200 });
  } catch (e) {
    const panel = await page.innerText("body").catch(() => "");
    throw new Error(`${what}: ${e.message.split("\n")[0]}\nthe page:\n${panel.slice(0, 3000)}`);
  }
}
