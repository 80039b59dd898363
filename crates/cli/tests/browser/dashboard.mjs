// The dashboard as an operator uses it, in a real browser (Debian's Chromium, headless):
// sign in with a token, see the dead letter on the overview, open its endpoint's page, press
// replay, and see the delivery succeed. Run by crates/cli/tests/browser.rs, which prepares the
// server, the failing-then-healthy receiver and the dead letter.
//
// Env: BASE_URL, TOKEN (admin), ENDPOINT_ID, CHROMIUM (the executable), and optionally
// SCREENSHOTS (a folder to write the pages to, for the docs).

import assert from "node:assert/strict";
import { launch } from "./launch.mjs";

const { BASE_URL, TOKEN, ENDPOINT_ID, CHROMIUM, SCREENSHOTS } = process.env;
for (const [name, value] of Object.entries({ BASE_URL, TOKEN, ENDPOINT_ID, CHROMIUM })) {
  if (!value) throw new Error(`set ${name}`);
}

const browser = await launch(CHROMIUM);
try {
  // 800 px wide: the layout must not clip there.
  const page = await browser.newPage({ viewport: { width: 800, height: 900 } });
  const shot = async (name) => {
    if (SCREENSHOTS) await page.screenshot({ path: `${SCREENSHOTS}/${name}.png`, fullPage: true });
  };

  // Without a session, the overview sends to the sign-in form; a wrong token is refused.
  await page.goto(`${BASE_URL}/`);
  assert.equal(new URL(page.url()).pathname, "/dashboard/sign-in");
  await page.fill("#token", "op_wrong");
  await page.click("button[type=submit]");
  await page.getByText("not signed in").waitFor();

  await page.fill("#token", TOKEN);
  await page.click("button[type=submit]");
  await page.waitForURL(`${BASE_URL}/`);

  // The webhook panel needs attention and sorts first, with the dead letter.
  const first = page.locator("section.panel").first();
  await first.getByText("needs attention").waitFor();
  assert.match(await first.locator("h2").innerText(), /Webhooks/);
  await first.getByText(/dead letter/).first().waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > innerWidth);
  assert.equal(overflow, false, "the overview is wider than 800 px");
  await shot("dashboard-overview");

  // Open the endpoint and replay its dead letter.
  await page.click(`a[href="/dashboard/endpoints/${ENDPOINT_ID}"]`);
  await page.waitForURL(`**/dashboard/endpoints/${ENDPOINT_ID}`);
  await page.getByText("Recent attempts").waitFor();
  await page.getByRole("button", { name: "Replay 1 dead letter" }).click();
  await page.waitForURL(`**/dashboard/endpoints/${ENDPOINT_ID}?done=replayed`);
  await page.getByText("Replayed: the deliveries are pending again.").waitFor();

  // The replayed delivery succeeds: the page shows a delivered attempt (reloading, as the
  // dispatcher works in the background).
  let delivered = false;
  for (let i = 0; i < 100 && !delivered; i++) {
    await page.reload();
    delivered = (await page.locator("td.ok", { hasText: "delivered" }).count()) > 0;
    if (!delivered) await page.waitForTimeout(100);
  }
  assert.ok(delivered, "the replayed delivery did not succeed");
  await shot("dashboard-endpoint");
  console.log("browser: ok");
} finally {
  await browser.close();
}
