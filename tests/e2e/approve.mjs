// Drives Debian's Chromium through chaperone's web page like an approver would: enroll with a passkey
// (CDP virtual authenticator), sign in with password + passkey, approve the pending request, and take a
// screenshot of every page, at desktop and phone width. Run by tests/it/browser.rs, which files the
// request with a real `ssh … request` first and checks that ssh proceeds.
//
// Env: BASE_URL (https://localhost:PORT), ENROLL_URL, CERT (the page's PEM certificate, trusted by its
// SPKI hash), SHOTS (screenshot dir), NAME, PASSWORD, CHROMIUM (default /usr/bin/chromium).
// Prints one JSON line: {"approved": ID, "pages": [...]} or exits 1 with the reason.
import { mkdirSync } from "node:fs";
import { addPasskeyAuthenticator, launchTrusting } from "./launch.mjs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing env ${k}`);
  return v;
};
const base = env("BASE_URL");
const shots = env("SHOTS");
const name = env("NAME");
const password = env("PASSWORD");
mkdirSync(shots, { recursive: true });


const browser = await launchTrusting(env("CERT"));
const pages = [];
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  // A request reason with markup must render as text: no dialog may ever open.
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  await addPasskeyAuthenticator(context, page);
  const shot = async (label) => {
    await page.screenshot({ path: `${shots}/${label}.png`, fullPage: true });
    pages.push(label);
  };
  const failIfError = async (where) => {
    const status = await page.locator("#passkey-status").textContent().catch(() => "");
    if (status && /error|could not|cancel|not/i.test(status) && !/Done/.test(status)) {
      throw new Error(`${where}: ${status}`);
    }
  };

  // Enroll: password twice, then the passkey instead of a TOTP app.
  await page.goto(env("ENROLL_URL"));
  await shot("enroll");
  await page.fill("#password", password);
  await page.fill("#password2", password);
  await page.click("button[data-passkey=enroll]");
  await page.waitForURL(`${base}/login`, { timeout: 15000 }).catch(async (e) => {
    await shot("enroll-failed");
    await failIfError("enrollment");
    throw e;
  });
  await shot("login");

  // Sign in: name and password, then the passkey.
  await page.fill("#name", name);
  await page.fill("#password", password);
  await page.click("button[data-passkey=signin]");
  await page.waitForURL(`${base}/requests`, { timeout: 15000 }).catch(async (e) => {
    await shot("signin-failed");
    await failIfError("sign-in");
    throw e;
  });

  // The pending request (filed by the test's ssh) shows up live; approve it as asked.
  const approve = page.locator("form[action$='/approve'] button.approve").first();
  await approve.waitFor({ timeout: 20000 });
  await shot("requests");
  const reasonShown = (await page.locator("#main").innerText()).includes("<script>alert(1)</script>");
  const action = await page.locator("form[action$='/approve']").first().getAttribute("action");
  const id = Number(action.split("/")[2]);
  await approve.click();
  await page.waitForLoadState("load");
  await shot("approved");

  for (const [path, label] of [["/grants", "grants"], ["/sessions", "sessions"], ["/account", "account"]]) {
    await page.goto(`${base}${path}`);
    await shot(label);
  }
  // Phone width: the same pages must stay usable.
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [path, label] of [["/requests", "requests-phone"], ["/grants", "grants-phone"]]) {
    await page.goto(`${base}${path}`);
    await shot(label);
  }
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  if (overflow) throw new Error("the grants page scrolls sideways at phone width");
  console.log(JSON.stringify({ approved: id, pages, dialogs, reasonShown }));
} catch (e) {
  console.error(String(e && e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
