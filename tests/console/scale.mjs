// The console with 200 Triggers, in headless Chromium: the mesh keeps updating every second,
// the namespace filter narrows it, and search finds one Trigger; prints what it saw as one
// JSON line. Usage: node scale.mjs <console URL> <screenshot path>.
import { launch, open, until } from "./browser.mjs";

const [url, screenshot] = process.argv.slice(2);
const browser = await launch();
const result = {};
const errors = [];
try {
  const page = await open(browser, url, errors);
  await until(page, "200 subscribers drawn", () => document.querySelectorAll("g.node.subscriber").length >= 200, null, 60000);
  result.subscribers = await page.$$eval("g.node.subscriber", (gs) => gs.length);
  result.namespaces = await page.$$eval("#namespace option", (os) => os.map((o) => o.value).filter(Boolean));
  // Live: the figures are redrawn as frames come, once a second.
  const seen = new Set();
  for (let i = 0; i < 12; i++) {
    seen.add(await page.textContent("#updated"));
    await page.waitForTimeout(500);
  }
  result.updates = seen.size;
  // How long one redraw of the whole mesh takes, for the record.
  result.renderMs = await page.evaluate(() => {
    const start = performance.now();
    document.getElementById("search").dispatchEvent(new Event("input"));
    return performance.now() - start;
  });
  // One namespace: only its Triggers.
  await page.selectOption("#namespace", result.namespaces[1]);
  result.inNamespace = await page.$$eval("g.node.subscriber", (gs) => gs.length);
  result.otherNamespaces = await page.$$eval("g.node", (gs, ns) => gs.filter((g) => !g.dataset.id.includes(`:${ns}/`) && !g.dataset.id.startsWith("sink:")).length, result.namespaces[1]);
  // Search: one Trigger stands out.
  await page.fill("#search", "route-37 ");
  await page.fill("#search", "route-37");
  result.matching = await page.$$eval("g.node.subscriber:not(.dim)", (gs) => gs.map((g) => g.dataset.id));
  // Brought into view, though it is the 38th of its column.
  await page.waitForTimeout(300);
  result.matchInView = await page.$eval("g.node.subscriber:not(.dim)", (g) => {
    const box = g.getBoundingClientRect();
    return box.top >= 0 && box.bottom <= window.innerHeight && box.left >= 0 && box.right <= window.innerWidth;
  });
  await page.screenshot({ path: screenshot });
} finally {
  result.errors = errors;
  await browser.close();
}
console.log(JSON.stringify(result));
