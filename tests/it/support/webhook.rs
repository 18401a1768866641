//! A webhook receiver on loopback: a bare HTTP/1.1 server that keeps every POST and answers each with
//! the next status from a script (then 200), so tests can check bodies, signatures and retries.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::bastion::wait_until;

/// One POST as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    /// Whether `X-Chaperone-Signature` is the HMAC-SHA256 of the body under `secret`.
    pub fn signed_with(&self, secret: &str) -> bool {
        let Some(hex_sig) = self
            .header("x-chaperone-signature")
            .and_then(|v| v.strip_prefix("sha256="))
        else {
            return false;
        };
        let Ok(sig) = hex::decode(hex_sig) else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        ring::hmac::verify(&key, &self.body, &sig).is_ok()
    }
}

pub struct Receiver {
    pub port: u16,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    /// Starts answering; the first POSTs get `script`'s statuses in turn, later ones 200.
    pub fn start(script: &[u16]) -> Receiver {
        Receiver::start_saying(script, "ok")
    }

    /// [`Receiver::start`], answering `said` as the body of the script's answers.
    pub fn start_saying(script: &[u16], said: &str) -> Receiver {
        let said = said.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.to_vec()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || !line.starts_with("POST ") {
                    continue;
                }
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((n, v)) = h.trim_end().split_once(':') {
                        headers.push((n.trim().to_owned(), v.trim().to_owned()));
                    }
                }
                let len = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let (status, text) = {
                    let mut s = script.lock().unwrap();
                    if s.is_empty() {
                        (200, "ok")
                    } else {
                        (s.remove(0), said.as_str())
                    }
                };
                sink.lock().unwrap().push(Delivery {
                    headers,
                    body,
                    status,
                });
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        Receiver { port, got }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/chaperone", self.port)
    }

    /// Every POST so far.
    pub fn all(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// The POSTs answered 2xx whose `event` is `event`.
    pub fn delivered(&self, event: &str) -> Vec<Delivery> {
        self.all()
            .into_iter()
            .filter(|d| (200..300).contains(&d.status) && d.json()["event"] == event)
            .collect()
    }

    /// Waits up to `secs` for a delivered `event`.
    pub fn wait_for(&self, event: &str, secs: u64) -> Option<Delivery> {
        let mut found = None;
        wait_until(Duration::from_secs(secs), || {
            found = self.delivered(event).into_iter().next();
            found.is_some()
        });
        found
    }
}

/// The `[webhook]` section for a receiver.
pub fn config(url: &str, secret: &str, extra: &str) -> String {
    format!("\n[webhook]\nurl = \"{url}\"\nsecret = \"{secret}\"\n{extra}\n")
}
