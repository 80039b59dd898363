// Debian's Chromium, headless, as this machine's closed network needs it: no background
// connections (they are refused here, many at a time), no first-run or update checks.

import { chromium } from "playwright-core";

/** Launches the Chromium at `executablePath`. */
export function launch(executablePath) {
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
