// The failure lab's HTML report in a real browser (Debian's Chromium, headless): every
// scenario's section is there with its numbers, its verdict and its chart, nothing is fetched
// from anywhere, and nothing overflows 800 px. Run by crates/cli/tests/browser.rs, which writes
// the report with `onephase lab all --report`.
//
// Env: REPORT (the page's path), SCENARIOS (their names, comma-separated), CHROMIUM (the
// executable), and optionally SCREENSHOTS (a folder to write the page to, for the docs).

import assert from "node:assert/strict";
import { launch } from "./launch.mjs";

const { REPORT, SCENARIOS, CHROMIUM, SCREENSHOTS } = process.env;
for (const [name, value] of Object.entries({ REPORT, SCENARIOS, CHROMIUM })) {
  if (!value) throw new Error(`set ${name}`);
}

const browser = await launch(CHROMIUM);
try {
  const page = await browser.newPage({ viewport: { width: 800, height: 900 } });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(`file://${REPORT}`);
  assert.equal(await page.locator("h1").innerText(), "The failure lab");

  for (const name of SCENARIOS.split(",")) {
    const section = page.locator(`section#${name}`);
    assert.equal(await section.count(), 1, `a section for ${name}`);
    if (await section.locator("p.skip").count() === 1) {
      // Its engine was not given: the section says what it needs, and nothing else.
      assert.match(await section.locator("p.skip").innerText(), /^Not run: it needs /);
      assert.equal(await page.locator(`a[href="#${name}"]`).count(), 1, `a link to ${name}`);
      continue;
    }
    assert.ok((await section.locator("table tbody tr").count()) >= 1, `${name} has numbers`);
    assert.equal(await section.locator("span.pass").count() + await section.locator("span.fail").count(), 2,
      `${name} shows the naive and the onephase verdict`);
    const chart = section.locator("figure.chart svg");
    assert.equal(await chart.count(), 1, `${name} has a chart`);
    const box = await chart.boundingBox();
    assert.ok(box && box.width > 300 && box.height > 50, `${name}'s chart is drawn: ${JSON.stringify(box)}`);
    assert.ok((await chart.locator("polyline").count()) >= 1, `${name}'s chart has lines`);
    // The summary links to the section.
    assert.equal(await page.locator(`a[href="#${name}"]`).count(), 1, `a link to ${name}`);
  }
  assert.equal(await page.locator("section").count(), SCENARIOS.split(",").length);
  assert.ok(await page.locator("text=onephase kept every invariant.").isVisible());

  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow} px wider than the window`);
  const elsewhere = requests.filter((u) => !u.startsWith("file://"));
  assert.deepEqual(elsewhere, [], "the page fetches nothing");

  if (SCREENSHOTS) {
    // The top of the page: the verdicts and the first scenarios, as the README shows it.
    await page.setViewportSize({ width: 1000, height: 1500 });
    await page.screenshot({ path: `${SCREENSHOTS}/lab-report.png` });
  }
  console.log("browser: ok");
} finally {
  await browser.close();
}
