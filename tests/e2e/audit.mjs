// Drives Debian's Chromium through chaperone's compliance workspace like an auditor would: sign in with
// password and TOTP code, filter the session history by a word a recorded session printed, open the
// session, play it (its time must advance), jump to a command's marker, find the word with the
// transcript search (and jump to it), download its evidence bundle, then watch a running session live
// (new output within 2 s); then
// an approver ends that session from its live view (a reason and a confirmation required).
// Screenshots land in SHOTS. Run by tests/it/browser.rs, which records the sessions with real ssh first.
//
// Env: BASE_URL, CERT, SHOTS, NAME, PASSWORD, CODE (a fresh TOTP code), WORD (printed by the recorded
// session), COMMAND (a command line typed in it), SESSION (its id), LIVE (a running session's id),
// APPROVER, APPROVER_CODE (an approver who ends it), TERMINATE_REASON, BUNDLE (where the evidence bundle
// is saved), CHROMIUM. Prints one JSON line with what it saw, or exits 1 with the reason.
import { mkdirSync } from "node:fs";
import { launchTrusting } from "./launch.mjs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing env ${k}`);
  return v;
};
const base = env("BASE_URL");
const shots = env("SHOTS");
const word = env("WORD");
mkdirSync(shots, { recursive: true });
const browser = await launchTrusting(env("CERT"));
const seen = {};
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  // The strict CSP must hold with the player in the page: any violation is a failure.
  // (chaperone serves no /favicon.ico: the browser's own request for it is not the page's problem.)
  // Once the approver has ended the live session, its page (shown again after the terminate) may open
  // the live stream of a session that has just ended: 409 "has ended" is then the right answer, and the
  // only error allowed.
  let endedLive = null;
  const expected = (url, status) => endedLive !== null && url === endedLive && status === 409;
  page.on("console", (m) => {
    const at = m.location().url || "";
    if (m.type() !== "error" || at.endsWith("/favicon.ico")) return;
    if (expected(at, 409) && m.text().includes("409")) return;
    problems.push(`console: ${m.text()} at ${at}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("response", (r) => {
    if (r.status() >= 400 && !expected(r.url(), r.status())) problems.push(`${r.status()} ${r.url()}`);
  });
  page.on("dialog", (d) => { problems.push(`dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
  const shot = (label) => page.screenshot({ path: `${shots}/${label}.png`, fullPage: true });

  const signIn = async (name, code) => {
    await page.goto(`${base}/login`);
    await page.fill("#name", name);
    await page.fill("#password", env("PASSWORD"));
    await page.fill("#code", code);
    await Promise.all([page.waitForURL(`${base}/requests`), page.click("form button[type=submit]")]);
  };
  await signIn(env("NAME"), env("CODE"));

  // The history, filtered by the word the session printed: the filter lives in the URL.
  await page.goto(`${base}/history`);
  await page.fill("#f-text", word);
  await Promise.all([page.waitForURL(/\/history\?/), page.click("form.filters button[type=submit]")]);
  seen.history_url = page.url();
  const rows = await page.locator("table.history tbody tr").count();
  seen.rows = rows;
  const link = page.locator(`a[href="/sessions/${env("SESSION")}"]`);
  if (await link.count() !== 1) throw new Error(`session ${env("SESSION")} not found by "${word}" (${rows} rows)`);
  seen.integrity = await page.locator("table.history tbody tr .integrity").first().textContent();
  await shot("history");
  await Promise.all([page.waitForURL(`${base}/sessions/${env("SESSION")}`), link.click()]);

  // The player loads, plays, and its time advances.
  await page.waitForFunction(() => window.chaperonePlayer && document.querySelectorAll("#markers button.marker").length > 0, null, { timeout: 15000 });
  await page.evaluate(() => window.chaperonePlayer.play());
  await page.waitForTimeout(1500);
  seen.played = await page.evaluate(() => window.chaperonePlayer.getCurrentTime());
  if (!(seen.played > 0)) throw new Error(`the player's time did not advance (${seen.played})`);
  await shot("session-playing");

  // A marker jumps to the command line it names.
  const markers = await page.locator("#markers button.marker").allTextContents();
  seen.markers = markers;
  const command = page.locator("#markers button.marker", { hasText: env("COMMAND") }).first();
  if (await command.count() !== 1) throw new Error(`no marker for "${env("COMMAND")}" in ${JSON.stringify(markers)}`);
  const markerTime = parseFloat(await command.getAttribute("data-time"));
  await command.click();
  await page.waitForTimeout(300);
  await page.evaluate(() => window.chaperonePlayer.pause());
  seen.after_marker = await page.evaluate(() => window.chaperonePlayer.getCurrentTime());
  if (Math.abs(seen.after_marker - markerTime) > 1.0) {
    throw new Error(`the marker at ${markerTime} s jumped to ${seen.after_marker} s`);
  }

  // The transcript search finds the word and jumps to it.
  await page.fill("#ts-text", word);
  await page.click("#transcript-search button[type=submit]");
  await page.waitForSelector("#hits button.hit", { timeout: 10000 });
  const hit = page.locator("#hits button.hit").first();
  seen.hit = await hit.textContent();
  if (!seen.hit.includes(word)) throw new Error(`the search found "${seen.hit}", not ${word}`);
  const hitTime = parseFloat(await hit.getAttribute("data-time"));
  await hit.click();
  await page.waitForTimeout(300);
  await page.evaluate(() => window.chaperonePlayer.pause());
  seen.after_hit = await page.evaluate(() => window.chaperonePlayer.getCurrentTime());
  if (Math.abs(seen.after_hit - hitTime) > 1.0) throw new Error(`the hit at ${hitTime} s jumped to ${seen.after_hit} s`);
  seen.audit = await page.locator("table.audit").textContent();
  await shot("session-search");

  // The evidence bundle of the session downloads (audited evidence.export).
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#evidence")]);
  await download.saveAs(env("BUNDLE"));
  seen.bundle = download.suggestedFilename();
  const failed = await download.failure();
  if (failed) throw new Error(`the evidence bundle did not download: ${failed}`);


  // The live view of a running session shows new output within 2 s.
  await page.goto(`${base}/sessions/${env("LIVE")}`);
  const ticks = async () => {
    const text = (await page.locator("#live").textContent()) || "";
    const all = [...text.matchAll(/tick-(\d+)/g)].map((m) => parseInt(m[1], 10));
    return all.length ? Math.max(...all) : -1;
  };
  const t0 = Date.now();
  let first = -1;
  while (first < 0 && Date.now() - t0 < 10000) { first = await ticks(); await page.waitForTimeout(100); }
  if (first < 0) throw new Error(`the live view showed nothing: ${await page.locator("main").textContent()}`);
  const t1 = Date.now();
  let later = first;
  while (later <= first && Date.now() - t1 < 2000) { later = await ticks(); await page.waitForTimeout(100); }
  seen.live = { first, later, ms: Date.now() - t1 };
  if (later <= first) throw new Error(`no new output in the live view within 2 s (${first})`);
  await shot("live");

  // An approver ends that session from its live view: the form wants a reason and a tick, and the
  // browser sends nothing without both.
  await context.clearCookies();
  await signIn(env("APPROVER"), env("APPROVER_CODE"));
  const livePage = `${base}/sessions/${env("LIVE")}`;
  await page.goto(livePage);
  const form = page.locator("form.terminate");
  await form.waitFor({ timeout: 10000 });
  await form.locator("button[type=submit]").click();
  await page.waitForTimeout(300);
  if (page.url() !== livePage) throw new Error(`terminate was sent without a reason: ${page.url()}`);
  await page.fill("#term-reason", env("TERMINATE_REASON"));
  await form.locator("button[type=submit]").click();
  await page.waitForTimeout(300);
  const unticked = await form.locator("input[name=confirm]").evaluate((el) => el.validity.valueMissing);
  if (page.url() !== livePage || !unticked) throw new Error("terminate was sent without the confirmation");
  await form.locator("input[name=confirm]").check();
  endedLive = `${livePage}/live`;
  await Promise.all([
    page.waitForResponse((r) => r.url() === `${livePage}/terminate` && r.request().method() === "POST"),
    form.locator("button[type=submit]").click(),
  ]);
  // The redirect names the notice in the address (`?notice=…`): the same page, with its notice.
  await page.waitForURL((u) => `${u.origin}${u.pathname}` === livePage);
  seen.terminated = (await page.locator("main").textContent()).match(/Session \S+ is being closed[^.]*/)?.[0];
  if (!seen.terminated) throw new Error(`no word that the session is being closed: ${await page.locator("main").textContent()}`);
  await shot("live-terminated");
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify(seen));
} catch (e) {
  console.error(String(e && e.stack || e), JSON.stringify(seen), problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
