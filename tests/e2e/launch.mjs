// Debian's Chromium for the e2e scripts: headless, trusting exactly the page's certificate by its SPKI
// hash (no --ignore-certificate-errors: WebAuthn refuses pages with certificate errors, and so should a
// test of it). CHROMIUM overrides the executable (default /usr/bin/chromium).
import { createHash, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

export function launchTrusting(certPath) {
  const spki = createHash("sha256")
    .update(new X509Certificate(readFileSync(certPath)).publicKey.export({ type: "spki", format: "der" }))
    .digest("base64");
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
}

// A CDP virtual authenticator on `page` (a platform passkey that verifies its user and answers at
// once), kept for the page's life: what registers through it signs in through it later.
export async function addPasskeyAuthenticator(context, page) {
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2", transport: "internal", hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });
  return cdp;
}
