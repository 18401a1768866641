// Opens each passkey link a vendor's ssh printed, in Debian's Chromium with one CDP virtual
// authenticator kept for the whole run (so the passkey registered through the first link answers the
// later ones), clicks the page's button and waits for its verdict. Run by tests/it/browser.rs, which
// feeds the links one per line on stdin as its real `ssh` clients print them.
//
// Env: CERT (the page's PEM certificate, trusted by its SPKI hash), SHOTS (screenshot dir), CHROMIUM.
// Prints one JSON line per link: {"link": N, "status": "<the page's status text>", "ok": true|false}.
import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { addPasskeyAuthenticator, launchTrusting } from "./launch.mjs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing env ${k}`);
  return v;
};
const shots = env("SHOTS");
mkdirSync(shots, { recursive: true });

const browser = await launchTrusting(env("CERT"));
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  await addPasskeyAuthenticator(context, page);
  let n = 0;
  for await (const line of createInterface({ input: process.stdin })) {
    const url = line.trim();
    if (!url) continue;
    n += 1;
    await page.goto(url);
    await page.screenshot({ path: `${shots}/vendor-link-${n}.png`, fullPage: true });
    await page.click("button[data-passkey=vendor]");
    const status = page.locator("#passkey-status");
    // The page's verdict: "Done…" or an error class on the status line.
    await page.waitForFunction(() => {
      const s = document.getElementById("passkey-status");
      return s && (/Done/.test(s.textContent) || s.classList.contains("error"));
    }, null, { timeout: 20000 });
    const text = (await status.textContent()) || "";
    await page.screenshot({ path: `${shots}/vendor-link-${n}-done.png`, fullPage: true });
    console.log(JSON.stringify({ link: n, status: text, ok: /Done/.test(text) }));
  }
} catch (e) {
  console.error(String(e && e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
