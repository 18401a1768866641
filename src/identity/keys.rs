//! Public keys as vendors hand them in (`ssh-ed25519 AAAA… comment`): parsed, checked, fingerprinted.

use russh::keys::{HashAlg, PublicKey};

/// A parsed, acceptable public key.
#[derive(Debug, Clone)]
pub struct ParsedKey {
    pub key: PublicKey,
    /// `algorithm base64`, without the comment.
    pub openssh: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub comment: String,
}

/// Parses one OpenSSH public key line. Refuses private keys, several keys, and weak algorithms.
pub fn parse_public_key(text: &str) -> Result<ParsedKey, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let line = match lines.as_slice() {
        [one] => *one,
        [] => return Err("no public key found".into()),
        _ => return Err("expected exactly one public key (one line)".into()),
    };
    if line.contains("PRIVATE KEY") {
        return Err("this is a private key: give the .pub file".into());
    }
    let key =
        PublicKey::from_openssh(line).map_err(|e| format!("not an OpenSSH public key: {e}"))?;
    let algorithm = key.algorithm();
    match algorithm.as_str() {
        "ssh-ed25519" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => {}
        "ssh-rsa" => {
            let bits = key
                .key_data()
                .rsa()
                .map_or(0, |k| k.n().as_positive_bytes().map_or(0, |b| b.len() * 8));
            if bits < 2048 {
                return Err(format!(
                    "RSA key of {bits} bits is too weak: use ed25519 or RSA >= 2048"
                ));
            }
        }
        other => {
            return Err(format!(
                "key type {other} is not accepted: use ed25519, ecdsa or RSA >= 2048"
            ));
        }
    }
    let openssh = key
        .to_openssh()
        .map_err(|e| format!("cannot encode key: {e}"))?
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let comment: String = key
        .comment()
        .as_str_lossy()
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    Ok(ParsedKey {
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        openssh,
        comment,
        key,
    })
}

/// The `SHA256:…` fingerprint of a key.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";

    #[test]
    fn parses_ed25519() {
        let k = parse_public_key(&format!("# comment\n{ED}\n")).unwrap();
        assert!(k.fingerprint.starts_with("SHA256:"));
        assert_eq!(k.comment, "alice@laptop");
        assert!(k.openssh.starts_with("ssh-ed25519 AAAA") && !k.openssh.contains("alice"));
    }

    #[test]
    fn refuses_junk() {
        assert!(parse_public_key("").is_err());
        assert!(parse_public_key("ssh-ed25519 garbage").is_err());
        assert!(parse_public_key(&format!("{ED}\n{ED}")).is_err());
        assert!(parse_public_key("-----BEGIN OPENSSH PRIVATE KEY-----").is_err());
    }
}
