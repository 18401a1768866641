// The benchmark's browser half (bench/search.sh, tests/it/search.rs `bench_search_and_open`): signs in
// to chaperone's page in Debian's Chromium, opens a session page and times how long it takes from the
// click on its link until the in-browser player is playing (its time past 0). Run RUNS times; prints
// one JSON line with every time in milliseconds, or exits 1 with the reason.
//
// Env: BASE_URL, CERT, NAME, PASSWORD, CODE (a fresh TOTP code), SESSION (the session to open), RUNS,
// CHROMIUM.
import { launchTrusting } from "./launch.mjs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing env ${k}`);
  return v;
};
const base = env("BASE_URL");
const session = env("SESSION");
const runs = parseInt(process.env.RUNS || "3", 10);
const browser = await launchTrusting(env("CERT"));
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${base}/login`);
  await page.fill("#name", env("NAME"));
  await page.fill("#password", env("PASSWORD"));
  await page.fill("#code", env("CODE"));
  await Promise.all([page.waitForURL(`${base}/requests`), page.click("form button[type=submit]")]);
  const times = [];
  const fetched = [];
  for (let i = 0; i < runs; i++) {
    let bytes = 0;
    const count = (r) => {
      const len = parseInt(r.headers()["content-length"] || "0", 10);
      if (r.url().includes(`/sessions/${session}/recordings/`)) bytes += len;
    };
    page.on("response", count);
    // The session to open is the newest: first on the history page.
    await page.goto(`${base}/history`);
    const link = page.locator(`a[href="/sessions/${session}"]`).first();
    const t0 = Date.now();
    await Promise.all([page.waitForURL(`${base}/sessions/${session}`), link.click()]);
    await page.waitForFunction(() => window.chaperonePlayer, null, { timeout: 60000 });
    await page.evaluate(() => window.chaperonePlayer.play());
    await page.waitForFunction(() => window.chaperonePlayer.getCurrentTime() > 0, null, { timeout: 60000, polling: 10 });
    times.push(Date.now() - t0);
    await page.evaluate(() => window.chaperonePlayer.pause());
    page.off("response", count);
    fetched.push(bytes);
  }
  console.log(JSON.stringify({ ms: times, recording_bytes_fetched: fetched }));
} catch (e) {
  console.error(String(e && e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
