// The console on the vehicle-telemetry flagship, as an operator would use it, in headless
// Chromium; prints what it saw as one JSON line.
// Usage: node flagship.mjs <console URL> <alert function's control URL> <screenshot folder>.
//
// 1. The mesh shows with live, non-zero rates.
// 2. The alert function breaks (the test's control URL): its edge turns red and its events
//    reach the dead letters; one of them is inspected.
// 3. The function comes back; "Redrive all" empties the dead letters, and the redrive says
//    how many it delivered. The redriven event is found by id with its whole path.
// 4. The live flow of the router shows a filter verdict for an event under the limit.
// 5. The metrics subscriber is paused (its lag grows) and resumed (it drains).
// 6. Its charts show the last minutes.
import { launch, open, until } from "./browser.mjs";

const [url, control, shots] = process.argv.slice(2);
const alert = "sub:telemetry/fleet-router/0";
const metrics = "sub:telemetry/metrics-feed/0";
const node = (id) => `g.node[data-id="${id}"]`;
const figure = (id) => `${node(id)} [data-figure="rate"]`;

const browser = await launch();
const result = {};
const errors = [];
try {
  const page = await open(browser, url, errors, { width: 1900, height: 820 });
  await until(page, "the flagship's mesh", () => document.querySelectorAll("g.node").length >= 7);
  result.nodes = await page.$$eval("g.node", (gs) => gs.map((g) => g.dataset.id));
  await until(page, "live rates", ([a, m]) => [a, m].every((id) => {
    const t = document.querySelector(`g.node[data-id="${id}"] [data-figure="rate"]`);
    return t && parseFloat(t.textContent) > 0;
  }), [alert, metrics]);
  result.rates = await page.$$eval('g.node [data-figure="rate"]', (ts) => ts.map((t) => t.textContent));
  await page.screenshot({ path: `${shots}/flagship.png` });

  // Break the alert function: its edge turns red, and its events reach the dead letters.
  await page.click(node(alert));
  await fetch(`${control}/control/break`);
  await until(page, "the alert sink's edge red", (from) => document.querySelector(`path.edge.failing[data-from="${from}"]`), alert);
  result.failing = await page.$$eval("path.edge.failing", (ps) => ps.map((p) => `${p.dataset.from}>${p.dataset.to}`));
  await until(page, "dead letters listed", () => document.querySelectorAll("#letters-table tr").length >= 3, null, 45000);
  result.letters = await page.$$eval("#letters-table tr", (rows) => rows.map((r) => ({ id: r.cells[0].textContent, reason: r.cells[1].textContent, attempts: r.cells[2].textContent })));
  // Inspect one: its error, the function's answer and the attempts.
  const inspected = result.letters[0].id;
  await page.click(`#letters-table tr:first-child button.link`);
  await until(page, "the dead letter inspected", () => /attempts/.test(document.querySelector("#letter")?.textContent || ""));
  result.inspected = await page.$$eval("#letter dt", (dts) => Object.fromEntries(dts.map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));
  await page.screenshot({ path: `${shots}/flagship-broken.png` });

  // Bring it back and redrive every dead letter, until none is left (an event in its last
  // attempt when the function came back may be dead-lettered just after a redrive).
  await fetch(`${control}/control/restore`);
  result.redrives = [];
  for (let round = 0; round < 5; round++) {
    await page.waitForTimeout(2500);
    const button = await page.$('#actions button:text("Redrive all")');
    if (!button) {
      if (round > 0) break;
      continue;
    }
    await page.$eval("#action-result", (p) => { p.textContent = ""; });
    await button.click();
    await until(page, "the redrive's outcome", () => /^redriven: /.test(document.querySelector("#action-result").textContent));
    result.redrives.push(await page.textContent("#action-result"));
  }
  await until(page, "no dead letters left", () => /Dead letters \(0\)/.test(document.querySelector("#letters h3")?.textContent || ""));
  await until(page, "the alert edge healthy again", (from) => !document.querySelector(`path.edge.failing[data-from="${from}"]`), alert, 30000);
  result.lettersAfter = await page.textContent("#letters h3");
  await page.screenshot({ path: `${shots}/flagship-redriven.png` });

  // The redriven event, found by id: its whole path.
  await page.fill("#find-id", inspected);
  await page.press("#find-id", "Enter");
  await until(page, "the event's path", () => document.querySelectorAll("#path-steps li").length > 0);
  result.path = await page.$$eval("#path-steps li", (lis) => lis.map((li) => li.textContent));
  result.onPath = await page.$$eval("g.node.onpath", (gs) => gs.map((g) => g.dataset.id));
  await page.screenshot({ path: `${shots}/flagship-path.png` });
  await page.click("#path-close");

  // The router's live flow: an event under the limit is filtered, with the verdict.
  await until(page, "a filter verdict in the live flow", () => [...document.querySelectorAll("#steps li.stage-filtered")].some((li) => /was false; data\.speed = /.test(li.textContent)));
  result.verdict = await page.$eval("#steps li.stage-filtered", (li) => li.textContent);

  // Pause the metrics subscriber: its lag grows; resume: it drains.
  await page.click(node(metrics));
  const lag = (id) => page.$eval(figure(id), (t) => Number((t.textContent.match(/lag (\d+)/) || [0, -1])[1]));
  await page.click('#actions button:text("Pause")');
  await until(page, "paused", () => /Pause .*: done/.test(document.querySelector("#action-result").textContent));
  await until(page, "the lag growing", (id) => {
    const t = document.querySelector(`g.node[data-id="${id}"] [data-figure="rate"]`);
    return t && Number((t.textContent.match(/lag (\d+)/) || [0, 0])[1]) >= 20;
  }, metrics);
  result.pausedLag = await lag(metrics);
  await page.screenshot({ path: `${shots}/flagship-paused.png` });
  await page.click('#actions button:text("Resume")');
  await until(page, "the lag drained", (id) => {
    const t = document.querySelector(`g.node[data-id="${id}"] [data-figure="rate"]`);
    return t && /lag 0\b/.test(t.textContent);
  }, metrics);
  result.resumedLag = await lag(metrics);
  // Its charts: a point a second since the process started.
  await until(page, "the throughput chart", () => (document.querySelector('#charts path[data-line="events"]')?.getAttribute("d") || "").split("L").length > 10);
  result.chartPoints = await page.$eval('#charts path[data-line="events"]', (p) => p.getAttribute("d").split("L").length);
  result.latencyDrawn = await page.$eval('#charts path[data-line="p99"]', (p) => (p.getAttribute("d") || "").length > 0);
  await page.click(node(alert));
  await page.waitForTimeout(1500);
  await page.screenshot({ path: `${shots}/console.png` });
} finally {
  result.errors = errors;
  await browser.close();
}
console.log(JSON.stringify(result));
