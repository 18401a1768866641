//! Staff sign-in state: sessions held in this process (idle sign-out), CSRF tokens, a per-address
//! sign-in rate limit, and password hashing (argon2id, off the async threads).
//!
//! Entry points: [`Sessions`] and [`Limiter`] (in the router state), [`hash_password`] and
//! [`verify_password`]. Accounts, second factors and lockout live in the core (database, audited).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::core::Staff;

/// The session cookie: `__Host-` pins it to this origin, path `/`, Secure.
pub const COOKIE: &str = "__Host-chaperone";

/// A signed-in browser or script.
#[derive(Debug, Clone)]
pub struct Session {
    pub staff: Staff,
    /// Must come back with every state change (form field `csrf` or header `X-CSRF-Token`).
    pub csrf: String,
    last_seen: Instant,
    /// A one-time message for the next page (result of the last action).
    pub flash: Option<String>,
}

/// Sessions of this node, by SHA-256 of the cookie value (the value itself is never kept).
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
}

pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS random source failing leaves no safe way to sign anyone in.
    if getrandom::fill(&mut bytes).is_err() {
        tracing::error!("the OS random source failed");
        std::process::abort();
    }
    hex::encode(bytes)
}

fn key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Sessions {
    pub fn new(idle: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
        }
    }

    /// Starts a session; returns the cookie value and the CSRF token.
    pub fn create(&self, staff: Staff) -> (String, String) {
        let token = random_token();
        let csrf = random_token();
        if let Ok(mut map) = self.map.lock() {
            let idle = self.idle;
            map.retain(|_, s| s.last_seen.elapsed() < idle);
            map.insert(
                key(&token),
                Session {
                    staff,
                    csrf: csrf.clone(),
                    last_seen: Instant::now(),
                    flash: None,
                },
            );
        }
        (token, csrf)
    }

    /// The session named by the request's cookie, if it is not idle past the limit; touches it.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie(headers, COOKIE)?;
        let mut map = self.map.lock().ok()?;
        let k = key(&token);
        let session = map.get_mut(&k)?;
        if session.last_seen.elapsed() >= self.idle {
            map.remove(&k);
            return None;
        }
        session.last_seen = Instant::now();
        let out = session.clone();
        session.flash = None;
        Some(out)
    }

    pub fn flash(&self, headers: &HeaderMap, message: String) {
        if let (Some(token), Ok(mut map)) = (cookie(headers, COOKIE), self.map.lock())
            && let Some(s) = map.get_mut(&key(&token))
        {
            s.flash = Some(message);
        }
    }

    pub fn remove(&self, headers: &HeaderMap) {
        if let (Some(token), Ok(mut map)) = (cookie(headers, COOKIE), self.map.lock()) {
            map.remove(&key(&token));
        }
    }
}

/// The `Set-Cookie` value for a new session.
pub fn set_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// Compares a presented CSRF token with the session's without an early exit.
pub fn csrf_ok(session: &Session, presented: Option<&str>) -> bool {
    let Some(p) = presented else { return false };
    let (a, b) = (p.as_bytes(), session.csrf.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// At most `max` sign-in attempts per address in `window`.
#[derive(Debug)]
pub struct Limiter {
    map: Mutex<HashMap<IpAddr, Vec<Instant>>>,
    max: usize,
    window: Duration,
}

impl Limiter {
    pub fn new(max: usize, window: Duration) -> Limiter {
        Limiter {
            map: Mutex::new(HashMap::new()),
            max,
            window,
        }
    }

    /// Counts an attempt from `ip`; false when it is over the limit.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        let window = self.window;
        map.retain(|_, v| {
            v.retain(|t| t.elapsed() < window);
            !v.is_empty()
        });
        let attempts = map.entry(ip).or_default();
        if attempts.len() >= self.max {
            return false;
        }
        attempts.push(Instant::now());
        true
    }
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password")]
pub struct HashError;

/// argon2id PHC string of `password`, computed on a blocking thread.
pub async fn hash_password(password: String) -> Result<String, HashError> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| HashError)?;
        let salt = SaltString::encode_b64(&salt).map_err(|_| HashError)?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|_| HashError)
    })
    .await
    .map_err(|_| HashError)?
}

/// A hash of a password nobody has, so unknown accounts take as long to refuse as known ones.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$O2Yd3C6vWb9jRNTaZb3lU2iYuWDTbswn8U3xX3Y5V7M";

/// Whether `password` matches `hash` (`None`: compared against a dummy, always false).
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
        && known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery".into(), Some(h.clone())).await);
        assert!(!verify_password("wrong".into(), Some(h)).await);
        assert!(!verify_password("anything".into(), None).await);
    }

    #[test]
    fn limiter_counts_per_address() {
        let l = Limiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.allow(a) && l.allow(a));
        assert!(!l.allow(a));
        assert!(l.allow(b));
    }
}
