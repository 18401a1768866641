// bench/player.sh: plays URL in headless Chromium until the end (or LIMIT s), or seeks to SEEK s;
// prints "to-end-seconds long-task-seconds seek-ms" (`-` where not measured, `>LIMIT` if cut).
import { chromium } from "playwright-core";
const [url, limit, seek] = process.argv.slice(2);
const b = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu"] });
const page = await b.newPage({ viewport: { width: 1600, height: 1000 } });
let crashed = false;
page.on("crash", () => { crashed = true; });
const t0 = Date.now();
const ask = (f, a) => Promise.race([page.evaluate(f, a), new Promise((_, j) => setTimeout(() => j(new Error("busy")), 5000))]);
await page.goto(seek ? `${url}&seek=1` : url);
let end = "-", seekMs = "-";
for (let i = 0; i < 100; i++) { try { if (await ask(() => window.p.getDuration())) break; } catch (e) {} await new Promise(r => setTimeout(r, 200)); }
if (seek) {
  try {
    seekMs = Math.round(await page.evaluate(async (t) => { const s = performance.now(); await window.p.seek(t);
      await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0))); return performance.now() - s; }, parseFloat(seek)));
  } catch (e) { seekMs = "error"; }
} else {
  end = `>${limit}`;
  while (!crashed && (Date.now() - t0) / 1000 < parseFloat(limit)) {
    await new Promise(r => setTimeout(r, 250));
    try { const r = await ask(() => ({ t: window.p.getCurrentTime(), d: window.p.getDuration() }));
      if (r.d && r.t >= r.d - 0.001) { end = ((Date.now() - t0) / 1000).toFixed(1); break; } } catch (e) {}
  }
}
let long = "-", errs = [];
try { const r = await ask(() => ({ l: window.longs.reduce((a, x) => a + x, 0), e: window.errs })); long = (r.l / 1000).toFixed(1); errs = r.e; } catch (e) { long = "busy"; }
console.log(`${String(end).padStart(10)} ${String(long).padStart(12)} ${String(seekMs).padStart(10)}${crashed ? " CRASHED" : ""}${errs.length ? " errors: " + errs[0].slice(0, 60) : ""}`);
await b.close();
