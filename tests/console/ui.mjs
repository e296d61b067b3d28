// Drives the ofe console in headless Chromium and prints what it saw as one JSON line.
// Usage: node ui.mjs <console URL> <screenshot path>.
import { launch, open, until } from "./browser.mjs";

const [url, screenshot] = process.argv.slice(2);
const browser = await launch();
const result = {};
try {
  const errors = [];
  const page = await open(browser, url, errors);
  // The graph, with the delivering subscriber's rate above zero, and the failing one's edge red.
  await page.waitForFunction(() => document.querySelectorAll("g.node").length >= 4, null, { timeout: 20000 });
  await page.waitForFunction(() => {
    const sub = document.querySelector('g.node[data-id$="/route/0"] [data-figure="rate"]');
    return sub && parseFloat(sub.textContent) > 0;
  }, null, { timeout: 20000 });
  // Attached, not "visible": a straight edge has a box of no height.
  await page.waitForSelector("path.edge.failing", { state: "attached", timeout: 20000 });
  result.nodes = await page.$$eval("g.node", (gs) => gs.map((g) => g.dataset.id));
  result.rate = await page.$eval('g.node[data-id$="/route/0"] [data-figure="rate"]', (t) => t.textContent);
  result.failing = await page.$$eval("path.edge.failing", (ps) => ps.map((p) => `${p.dataset.from}>${p.dataset.to}`));
  result.summary = await page.textContent("#summary");
  // A subscriber's events, live.
  await page.click('g.node[data-id$="/route/0"]');
  await page.waitForSelector("#steps li.stage-delivered", { timeout: 20000 });
  result.steps = await page.$$eval("#steps li", (lis) => lis.slice(0, 5).map((li) => li.textContent));
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-subscriber.png"), fullPage: true });
  // Pause the delivering subscriber: its lag grows while events keep coming; resume: it drains.
  const lag = () => page.$eval('g.node[data-id$="/route/0"] [data-figure="rate"]', (t) => Number((t.textContent.match(/lag (\d+)/) || [0, 0])[1]));
  await page.click('#actions button:text("Pause")');
  await page.waitForFunction(() => /Pause .*: done/.test(document.querySelector("#action-result").textContent), null, { timeout: 10000 });
  await page.waitForFunction(() => {
    const t = document.querySelector('g.node[data-id$="/route/0"] [data-figure="rate"]');
    return t && Number((t.textContent.match(/lag (\d+)/) || [0, 0])[1]) > 0;
  }, null, { timeout: 30000 });
  result.pausedLag = await lag();
  await page.click('#actions button:text("Resume")');
  await page.waitForFunction(() => {
    const t = document.querySelector('g.node[data-id$="/route/0"] [data-figure="rate"]');
    return t && /lag 0\b/.test(t.textContent);
  }, null, { timeout: 30000 });
  result.resumedLag = await lag();
  // The failing subscriber's dead letters, listed, then purged.
  await page.click('g.node[data-id$="/route/1"]');
  await page.waitForSelector("#letters-table tr", { state: "attached", timeout: 20000 }).catch(async (e) => {
    throw new Error(`${e.message}\nthe panel: ${await page.innerHTML("#panel")}`);
  });
  result.letters = await page.$$eval("#letters-table tr", (rows) => rows.map((r) => r.cells[1].textContent));
  await page.click('#actions button:text("Purge all")');
  await page.waitForFunction(() => /Purge every dead letter .*: done/.test(document.querySelector("#action-result").textContent), null, { timeout: 10000 });
  result.purged = await page.textContent("#action-result");
  // Send a test event from the input's panel, as `ofe send` does.
  await page.click('g.node[data-id^="event:"]');
  await page.fill("#send-data", '{"from":"the console"}');
  await page.click('#actions button:text("Send a test event")');
  await until(page, "the test event sent", () => /Send a test event .*: done/.test(document.querySelector("#action-result").textContent));
  result.sent = await page.textContent("#action-result");
  // Replay the delivering subscriber from a minute ago; its progress shows until it is done.
  await page.click('g.node[data-id$="/route/0"]');
  const from = new Date(Date.now() - 60000 - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  await page.fill("#replay-from", from);
  await page.click('#actions button:text("Replay")');
  await until(page, "the replay done", () => /^replay \S+: done, read [1-9]/.test(document.querySelector("#action-result").textContent), null, 60000);
  result.replay = await page.textContent("#action-result");
  // Search dims what does not match.
  await page.fill("#search", "fail");
  result.dimmed = await page.$$eval("g.node.dim", (gs) => gs.length);
  await page.fill("#search", "");
  await page.screenshot({ path: screenshot, fullPage: true });
  result.errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
