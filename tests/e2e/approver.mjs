// Issue 15: the approver's page in Debian's Chromium, with JavaScript on. An auditor enrolls by scanning
// the enrollment page's QR code (a screenshot of it decoded by zbarimg must be the page's otpauth URI);
// an approver approves one request as asked (its notice must survive the live refresh that another tab's
// decision causes), narrows one and denies one, finds the three on the Decisions page with who and why,
// is asked before a revoke (and refused without a reason) and before a terminate, and sees the vendor's
// logins with their tunnels. Every page is shot at 1280 and 390 px (SHOTS) and must not scroll sideways
// at 390; no console error, CSP violation or dialog may appear. Run by tests/it/browser.rs, which files
// the requests and opens the sessions with the real ssh first.
//
// Env: BASE_URL, CERT, SHOTS, PASSWORD, APPROVER, APPROVER_CODE, AUDITOR, AUDITOR_ENROLL_URL, ASKED,
// NARROW, DENY (request ids), LIVE (a running exec session to terminate), TUNNEL (a tunnel session's
// id), CHROMIUM. Prints one JSON line with what it saw, or exits 1 with the reason.
import { createHmac } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { launchTrusting } from "./launch.mjs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing env ${k}`);
  return v;
};
const base = env("BASE_URL");
const shots = env("SHOTS");
const password = env("PASSWORD");
const [asked, narrow, deny] = [env("ASKED"), env("NARROW"), env("DENY")];
mkdirSync(shots, { recursive: true });

// RFC 6238 (SHA-1, 6 digits, 30 s), as an authenticator app computes it from the scanned URI.
function base32(s) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0, value = 0;
  const out = [];
  for (const c of s.replace(/=+$/, "").toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 255); bits -= 8; }
  }
  return Buffer.from(out);
}
function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const h = createHmac("sha1", base32(secret)).update(counter).digest();
  const o = h[h.length - 1] & 15;
  const n = (((h[o] & 127) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3]) % 1000000;
  return String(n).padStart(6, "0");
}
const stepNow = () => Math.floor(Date.now() / 1000 / 30);

const browser = await launchTrusting(env("CERT"));
const seen = { shots: [] };
const problems = [];
// The one error response the run asks for: the revoke confirmed without a reason (400).
let refusing = false;
let current = null;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const watch = (page, name) => {
    page.on("console", (m) => {
      const at = m.location().url || "";
      if (m.type() !== "error" || at.endsWith("/favicon.ico")) return;
      if (refusing && m.text().includes("400")) return;
      problems.push(`${name} console: ${m.text()} at ${at}`);
    });
    page.on("pageerror", (e) => problems.push(`${name} page error: ${e.message}`));
    page.on("response", (r) => {
      if (r.status() < 400 || r.url().endsWith("/favicon.ico")) return;
      if (refusing && r.status() === 400 && r.url().endsWith("/revoke")) return;
      problems.push(`${name}: ${r.status()} ${r.url()}`);
    });
    page.on("dialog", (d) => { problems.push(`${name} dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
  };
  const page = await context.newPage();
  current = page;
  watch(page, "tab 1");
  const shot = async (label, p = page) => {
    await p.screenshot({ path: `${shots}/${label}.png`, fullPage: true });
    seen.shots.push(label);
  };
  const noSideways = async (label, p = page) => {
    const wide = await p.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    if (wide) throw new Error(`${label} scrolls sideways at ${p.viewportSize().width} px`);
  };
  const phone = { width: 390, height: 844 };
  const desktop = { width: 1280, height: 900 };
  const text = async (sel, p = page) => (await p.locator(sel).first().textContent()) || "";

  // 1. The auditor's enrollment: the QR code decodes (zbarimg, from a screenshot of the page) to the
  // page's otpauth URI; the app's first code finishes the enrollment.
  await page.goto(env("AUDITOR_ENROLL_URL"));
  await page.locator("#totp-qr").screenshot({ path: `${shots}/enroll-qr.png` });
  const decoded = execFileSync("zbarimg", ["--raw", "-q", `${shots}/enroll-qr.png`], { encoding: "utf8" }).trim();
  const href = await page.locator("#totp-uri").getAttribute("href");
  if (decoded !== href) throw new Error(`the QR code reads ${JSON.stringify(decoded)}, the page's link is ${JSON.stringify(href)}`);
  const secret = new URL(decoded).searchParams.get("secret");
  if (!secret || secret !== (await text("#totp-secret"))) throw new Error(`no secret, or not the one shown: ${decoded}`);
  seen.qr = decoded.replace(/secret=[A-Z2-7]+/, "secret=…");
  await shot("enroll");
  await page.setViewportSize(phone);
  await shot("enroll-phone");
  await noSideways("enroll");
  await page.setViewportSize(desktop);
  await page.fill("#password", password);
  await page.fill("#password2", password);
  const enrolledStep = stepNow();
  await page.fill("#code", totp(secret, enrolledStep));
  await page.click("#enroll button[type=submit]");
  await page.waitForLoadState("load");
  if (!(await text("main")).includes("You are enrolled")) throw new Error(`enrollment: ${await text("main")}`);

  // 2. The approver signs in.
  const signIn = async (name, code) => {
    await page.goto(`${base}/login`);
    await page.fill("#name", name);
    await page.fill("#password", password);
    await page.fill("#code", code);
    await Promise.all([page.waitForURL(`${base}/requests`), page.click("form button[type=submit]")]);
  };
  await page.goto(`${base}/login`);
  await shot("login");
  await page.setViewportSize(phone);
  await shot("login-phone");
  await page.setViewportSize(desktop);
  await signIn(env("APPROVER"), env("APPROVER_CODE"));

  // 3. The pending cards: how long each has waited, when it lapses, the vendor's recent sessions.
  for (const id of [asked, narrow, deny]) await page.locator(`#req-${id}`).waitFor({ timeout: 20000 });
  const card = await text(`article[aria-labelledby=req-${asked}]`);
  for (const want of ["Waiting", "Expires", "unless decided", "recent sessions"]) {
    if (!card.includes(want)) throw new Error(`the card has no "${want}": ${card}`);
  }
  await page.locator(`article[aria-labelledby=req-${asked}] details summary`).click();
  const history = await text(`article[aria-labelledby=req-${asked}] details`);
  if (!/mri-01 (exec|tunnel)/.test(history)) throw new Error(`no session in the vendor's history: ${history}`);
  // A service's label sits beside its checkbox, on the same line.
  const beside = await page.locator(`form[action="/requests/${narrow}/approve"] label.check`).first().evaluate((l) => {
    const box = l.querySelector("input").getBoundingClientRect(), word = l.querySelector("span").getBoundingClientRect();
    return word.left >= box.right && Math.abs((word.top + word.bottom) / 2 - (box.top + box.bottom) / 2) < 8;
  });
  if (!beside) throw new Error("a service checkbox's label is not beside it");
  await shot("requests");
  await page.setViewportSize(phone);
  await shot("requests-pending-phone");
  await noSideways("the pending requests");
  await page.setViewportSize(desktop);

  // 4. Approve as asked, with JavaScript on: the notice shows, and stays when the page refreshes itself
  // because a decision in another tab changed the list.
  await Promise.all([
    page.waitForURL(/\/requests\?notice=/),
    page.click(`form[action="/requests/${asked}/approve"] button.approve`),
  ]);
  const notice = await text(".flash");
  if (!notice.includes(`Request #${asked}: approved`)) throw new Error(`no notice after approving: ${notice}`);
  const other = await context.newPage();
  watch(other, "tab 2");
  await other.goto(`${base}/requests`);
  const refreshed = page.waitForRequest((r) => r.headers()["x-chaperone-background"] === "1", { timeout: 15000 });
  await other.fill(`#why-${deny}`, "use the Sunday <maintenance> window");
  await Promise.all([other.waitForURL(/\/requests\?notice=/), other.click(`form[action="/requests/${deny}/deny"] button.deny`)]);
  if (!(await text(".flash", other)).includes(`Request #${deny}: denied`)) throw new Error("no notice after denying");
  await other.close();
  await refreshed;
  await page.locator(`#req-${deny}`).waitFor({ state: "detached", timeout: 15000 });
  const kept = await text(".flash");
  if (!kept.includes(`Request #${asked}: approved`)) throw new Error(`the live refresh lost the notice: ${kept}`);
  seen.notice_after_refresh = kept;
  await shot("approved");

  // Narrow: one service of two, half an hour of two hours. A change elsewhere (here a failed sign-in in
  // another browser, audited) while the narrowed form waits, its field no longer focused, must not put
  // the ticks and the time back: the approval would grant what the approver took out.
  const narrowForm = page.locator(`form[action="/requests/${narrow}/approve"]`);
  await narrowForm.locator("input[name=service][value=dicom]").uncheck();
  await narrowForm.locator("input[name=duration]").fill("30m");
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  // An audited change the page hears of: a failed sign-in in another browser.
  const failedSignInElsewhere = async () => {
    const stranger = await browser.newContext();
    const elsewhere = await stranger.newPage();
    await elsewhere.goto(`${base}/login`);
    await elsewhere.fill("#name", env("AUDITOR"));
    await elsewhere.fill("#password", "not-the-password");
    await Promise.all([elsewhere.waitForURL(/\/login/), elsewhere.click("#signin button[type=submit]")]);
    await elsewhere.locator("p.error").waitFor({ timeout: 10000 });
    await stranger.close();
  };
  await failedSignInElsewhere();
  await page.waitForTimeout(4000);
  const untouched = await narrowForm.evaluate((f) => ({
    dicom: f.querySelector("input[name=service][value=dicom]").checked,
    duration: f.querySelector("input[name=duration]").value,
  }));
  if (untouched.dicom || untouched.duration !== "30m") {
    throw new Error(`the live refresh undid the narrowing: ${JSON.stringify(untouched)}`);
  }
  await Promise.all([page.waitForURL(/\/requests\?notice=/), narrowForm.locator("button.approve").click()]);
  const narrowed = await text(".flash");
  if (!narrowed.includes(`Request #${narrow}: approved: grant #`) || !narrowed.includes(" of ssh until ")) {
    throw new Error(`the notice does not say what was granted: ${narrowed}`);
  }

  // The session history, unfiltered (its selects show their first option, which the page does not
  // mark), still refreshes itself on a change: an untouched page is not taken for a form being filled.
  await page.goto(`${base}/history`);
  const historyRefreshed = page.waitForRequest((r) => r.headers()["x-chaperone-background"] === "1", { timeout: 15000 });
  await failedSignInElsewhere();
  await historyRefreshed;

  // 5. Decisions: the three, with outcome, who, what was asked and granted, and why; a filter in the URL.
  await page.goto(`${base}/decisions`);
  const row = async (id) => (await page.locator("table.decisions tbody tr")
    .filter({ has: page.locator("td[data-label=Request]", { hasText: new RegExp(`^#${id}$`) }) })
    .first().textContent()) || "";
  const rows = { asked: await row(asked), narrow: await row(narrow), deny: await row(deny) };
  const expect = (what, r, words) => {
    for (const w of words) if (!r.includes(w)) throw new Error(`decision ${what} lacks "${w}": ${r}`);
  };
  expect("approved", rows.asked, ["approved", env("APPROVER"), "INC-1", "granted as grant #"]);
  expect("narrowed", rows.narrow, ["narrowed", env("APPROVER"), "asked ssh, dicom for 2h; granted ssh for 30m"]);
  expect("denied", rows.deny, ["denied", env("APPROVER"), "use the Sunday <maintenance> window", "INC-3"]);
  seen.decisions = rows;
  await shot("decisions");
  await page.selectOption("#f-state", "narrowed");
  await Promise.all([page.waitForURL(/state=narrowed/), page.click("form.filters button[type=submit]")]);
  const filtered = await page.locator("table.decisions tbody tr").count();
  if (filtered !== 1) throw new Error(`state=narrowed shows ${filtered} rows`);

  // 6. Grants: reason, start, end, time left, narrowed-from, issued by a name; revoke asks first and
  // needs a reason.
  await page.goto(`${base}/grants`);
  const grants = await page.evaluate(() => fetch("/api/grants").then((r) => r.json()));
  const g = grants.find((x) => String(x.request_id) === asked);
  const gn = grants.find((x) => String(x.request_id) === narrow);
  if (!g || !gn) throw new Error(`grants: ${JSON.stringify(grants)}`);
  const grantRow = (await page.locator("table.grants tbody tr")
    .filter({ has: page.locator(`form[action="/grants/${gn.id}/revoke"]`) })
    .first().textContent()) || "";
  for (const want of ["narrowed from ssh, dicom for 2h", "INC-2", env("APPROVER"), "Z"]) {
    if (!grantRow.includes(want)) throw new Error(`the narrowed grant's row lacks "${want}": ${grantRow}`);
  }
  if (grantRow.includes("staff:")) throw new Error(`issued by shows an internal name: ${grantRow}`);
  if (!(await page.locator(".left[data-left]").count())) throw new Error("no time left shown");
  await shot("grants");
  await page.locator(`form[action="/grants/${g.id}/revoke"] button`).click();
  await page.waitForURL(`${base}/grants/${g.id}/revoke`);
  if (!(await text("h1")).includes(`Revoke grant #${g.id}?`)) throw new Error(`no confirmation: ${await text("main")}`);
  const still = await page.evaluate(() => fetch("/api/grants").then((r) => r.json()));
  if (!still.some((x) => x.id === g.id)) throw new Error("the first click revoked the grant");
  await shot("revoke-confirm");
  await page.setViewportSize(phone);
  await shot("revoke-confirm-phone");
  await noSideways("the revoke confirmation");
  await page.setViewportSize(desktop);
  // Confirmed with no reason (the browser's own check taken away): the server refuses.
  refusing = true;
  await page.locator("#reason").evaluate((el) => { el.removeAttribute("required"); el.value = "   "; });
  await page.click("form.confirm button[type=submit]");
  await page.waitForLoadState("load");
  const refusal = await text("main");
  if (!refusal.includes("needs a reason")) throw new Error(`a revoke without a reason was not refused: ${refusal}`);
  refusing = false;
  seen.revoke_refused = (await text("[role=alert]")).trim();
  await shot("revoke-refused");
  await page.fill("#reason", "INC-1 finished early");
  await Promise.all([page.waitForURL(/\/grants\?notice=/), page.click("form.confirm button[type=submit]")]);
  if (!(await text(".flash")).includes(`Grant #${g.id} revoked`)) throw new Error("no notice after revoking");

  // 7. Live sessions: by login, with the grant, duration and bytes; an idle -L login too; terminate asks.
  await page.goto(`${base}/sessions`);
  const live = await text("table.live");
  for (const want of ["alice → mri-01", "tunnel dicom", "nothing open", "#", " B"]) {
    if (!live.includes(want)) throw new Error(`the live list lacks "${want}": ${live}`);
  }
  if (/[0-9a-f]{16}/.test(live)) throw new Error(`the live list shows raw session ids: ${live}`);
  seen.logins = await page.locator("tbody.login").count();
  // The login that runs the command also holds the forward: its tunnel is listed under the same login.
  const group = page.locator("tbody.login").filter({ has: page.locator(`a[href="/sessions/${env("LIVE")}"]`) });
  if (!(await group.locator(`a[href="/sessions/${env("TUNNEL")}"]`).count())) {
    throw new Error(`the tunnel is not under its login: ${live}`);
  }
  await shot("sessions");
  await page.fill(`#tr-${env("LIVE")}`, "wrong device");
  await page.click(`form[action="/sessions/${env("LIVE")}/terminate"] button`);
  await page.waitForURL(`${base}/sessions/${env("LIVE")}/terminate`);
  if (!(await text("h1")).includes("Terminate this session?")) throw new Error(`no confirmation: ${await text("main")}`);
  const running = await page.evaluate(
    (id) => fetch("/api/sessions?state=live").then((r) => r.json()).then((l) => l.some((s) => s.id === id)),
    env("LIVE"),
  );
  if (!running) throw new Error("the first click ended the session");
  await shot("terminate-confirm");
  await page.setViewportSize(phone);
  await shot("terminate-confirm-phone");
  await noSideways("the terminate confirmation");
  await page.setViewportSize(desktop);
  await Promise.all([page.waitForURL(/\/sessions\?notice=/), page.click("form.confirm button[type=submit]")]);
  if (!(await text(".flash")).includes(`Session ${env("LIVE")} is being closed`)) throw new Error("no notice after terminating");

  // 8. Every page at phone width, and the confirmations there (cancelled).
  await page.goto(`${base}/account`);
  await shot("account");
  await page.goto(`${base}/history`);
  await shot("history");
  await page.setViewportSize(phone);
  for (const p of ["requests", "decisions", "grants", "sessions", "account", "history"]) {
    await page.goto(`${base}/${p}`);
    await shot(`${p}-phone`);
    await noSideways(p);
  }
  // A confirmation's Cancel goes back and changes nothing.
  await page.goto(`${base}/grants`);
  await page.locator(`form[action="/grants/${gn.id}/revoke"] button`).click();
  await page.waitForURL(`${base}/grants/${gn.id}/revoke`);
  await Promise.all([page.waitForURL(`${base}/grants`), page.click("form.confirm a.button")]);
  if (!(await page.locator(`form[action="/grants/${gn.id}/revoke"]`).count())) throw new Error("cancel revoked the grant");
  await page.setViewportSize(desktop);

  // 9. The auditor (a code of a later step than the enrollment's): no Action column, nothing to press.
  await page.goto(`${base}/requests`);
  await page.click("nav form.who button[type=submit]");
  await page.waitForURL(`${base}/login`);
  while (stepNow() <= enrolledStep) await new Promise((r) => setTimeout(r, 1000));
  await signIn(env("AUDITOR"), totp(secret, stepNow()));
  for (const p of ["grants", "sessions"]) {
    for (const [size, suffix] of [[desktop, ""], [phone, "-phone"]]) {
      await page.setViewportSize(size);
      await page.goto(`${base}/${p}`);
      const heads = await page.locator("th").allTextContents();
      if (heads.some((h) => h.trim() === "Action")) throw new Error(`the auditor's ${p} page has an Action column`);
      if (await page.locator("main form[method=post]").count()) throw new Error(`the auditor's ${p} page has a form`);
      await shot(`${p}-auditor${suffix}`);
    }
  }
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify(seen));
} catch (e) {
  let where = "";
  if (current) {
    await current.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
    where = `at ${current.url()}: ${await current.locator("main").textContent().catch(() => "?")}`;
  }
  console.error(String((e && e.stack) || e), where, JSON.stringify(seen), problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
