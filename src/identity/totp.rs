//! TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step) with replay protection.
//!
//! Entry points: [`new_seed`], [`provisioning_uri`], [`check`]. `check` returns the time step a code
//! matched; the caller must record it atomically and refuse any code at or before the last accepted
//! step (`store::Tx::accept_totp_step`): totp-rs itself does not prevent replay.

use totp_rs::{Builder, Totp};

/// 160-bit seeds (RFC 4226 recommends 160; totp-rs requires at least 128).
pub const SEED_BYTES: usize = 20;
pub const STEP_SECS: u64 = 30;
const ISSUER: &str = "chaperone";

pub fn new_seed() -> Vec<u8> {
    let mut seed = vec![0u8; SEED_BYTES];
    crate::secrets::fill_random(&mut seed);
    seed
}

fn totp(seed: &[u8], account: &str) -> Result<Totp, String> {
    Builder::new()
        .with_secret(seed.to_vec())
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .build()
        .map_err(|e| format!("cannot build TOTP: {e}"))
}

/// The `otpauth://totp/…` URI an authenticator app scans.
pub fn provisioning_uri(seed: &[u8], account: &str) -> Result<String, String> {
    totp(seed, account)?
        .to_url()
        .map_err(|e| format!("cannot build TOTP URI: {e}"))
}

/// The time step `code` matches at `now` (±1 step), if any. Non-digit input never matches.
pub fn check(seed: &[u8], code: &str, now: u64) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = totp(seed, "check").ok()?.check(code, now)?;
    i64::try_from(step).ok()
}

/// The code for `now` (tests and the demo print it; never logged).
pub fn code_at(seed: &[u8], now: u64) -> Result<String, String> {
    Ok(totp(seed, "code")?.generate(now).to_string())
}

/// A QR code of `text` (an `otpauth://` URI) for a terminal: two modules per character cell with
/// Unicode half blocks, light modules drawn (as `qrencode -t UTF8` does: terminals are mostly light text on
/// a dark background), with a quiet zone. Lines end in `\r\n` (SSH prompts are shown raw).
pub fn terminal_qr(text: &str) -> Result<String, String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L)
        .map_err(|e| format!("cannot draw a QR code: {e}"))?;
    let drawn = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    Ok(drawn.lines().collect::<Vec<_>>().join("\r\n"))
}

/// Base32 of a seed (what oathtool and authenticator apps take).
pub fn seed_base32(seed: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer: u64 = 0;
    let mut bits = 0;
    for &b in seed {
        buffer = (buffer << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238 appendix B, SHA-1 seed "12345678901234567890", last 6 digits.
    const RFC_SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc6238_vectors() {
        assert_eq!(code_at(RFC_SEED, 59).unwrap(), "287082");
        assert_eq!(code_at(RFC_SEED, 1111111109).unwrap(), "081804");
        assert_eq!(check(RFC_SEED, "287082", 59), Some(1));
        // one step of skew either way, not two
        assert_eq!(check(RFC_SEED, "287082", 59 + 30), Some(1));
        assert_eq!(check(RFC_SEED, "287082", 59 + 60), None);
        assert_eq!(check(RFC_SEED, "28708x", 59), None);
        assert_eq!(check(RFC_SEED, "", 59), None);
    }

    #[test]
    fn terminal_qr_is_half_blocks() {
        let qr = terminal_qr("otpauth://totp/chaperone:alice?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert!(qr.contains('\u{2580}') || qr.contains('\u{2584}'), "{qr}");
        assert!(
            qr.chars()
                .all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}' | '\r' | '\n'))
        );
        let rows = qr.split("\r\n").count();
        assert!((15..40).contains(&rows), "{rows}");
    }

    #[test]
    fn uri_and_base32() {
        let seed = new_seed();
        let uri = provisioning_uri(&seed, "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/chaperone:alice?"), "{uri}");
        assert!(uri.contains(&seed_base32(&seed)), "{uri}");
        assert_eq!(seed_base32(b"Hello!\xde\xad\xbe\xef"), "JBSWY3DPEHPK3PXP");
    }
}
