//! Secrets at rest: device credentials and TOTP seeds are sealed with XChaCha20-Poly1305 under the
//! secrets key before they reach the database.
//!
//! Entry points: [`SecretsKey::load`] / [`SecretsKey::generate_file`], then [`SecretsKey::seal`] and
//! [`SecretsKey::open`]. Each sealed value is bound to its purpose (associated data such as
//! `vendor-totp:alice`), so a ciphertext copied into another row does not open. A sealed blob starts with
//! the key's short fingerprint so a value sealed under another key fails with a clear error; this is also
//! what key rotation (`chaperone secrets rotate`) uses to tell old from new.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

const MAGIC: &[u8; 4] = b"chs1";
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;

/// Why a secret could not be loaded, sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file is missing or unreadable.
    #[error("cannot read secrets key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but does not hold a key.
    #[error("secrets key {path} is malformed: expected 64 hex characters")]
    Malformed { path: PathBuf },
    /// The key file is readable by group or others.
    #[error("secrets key {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    /// Refused to overwrite an existing key: that would lose every secret sealed under it.
    #[error("refusing to overwrite existing secrets key {path}")]
    Exists { path: PathBuf },
    /// Writing a new key failed.
    #[error("cannot write secrets key {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The value was sealed under a different key (see key rotation in SECURITY.md).
    #[error("secret was sealed under another key (id {found}, this key is {expected})")]
    WrongKey { found: String, expected: String },
    /// The value is not a sealed blob, was altered, or belongs to another row.
    #[error("secret failed authentication (altered, truncated, or moved from another record)")]
    Corrupt,
}

/// The id (hex) of the key that sealed `sealed`, as its blob says; `None` for no sealed blob.
pub fn sealed_key_id(sealed: &[u8]) -> Option<String> {
    (sealed.len() > MAGIC.len() + KEY_ID_LEN && &sealed[..MAGIC.len()] == MAGIC)
        .then(|| hex::encode(&sealed[MAGIC.len()..MAGIC.len() + KEY_ID_LEN]))
}

/// The key that seals secrets at rest. Its bytes never appear in `Debug` output.
pub struct SecretsKey {
    cipher: XChaCha20Poly1305,
    id: [u8; KEY_ID_LEN],
    /// Where [`SecretsKey::subkey`] derives from (a hash of the key, never the key itself).
    subkeys: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretsKey(id {})", hex::encode(self.id))
    }
}

impl SecretsKey {
    fn from_bytes(bytes: &[u8; 32]) -> SecretsKey {
        let digest = Sha256::digest([b"chaperone-secrets-key-id:".as_slice(), bytes].concat());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let mut subkeys = Zeroizing::new([0u8; 32]);
        subkeys.copy_from_slice(&Sha256::digest(
            [b"chaperone-secrets-subkeys:".as_slice(), bytes].concat(),
        ));
        SecretsKey {
            cipher: XChaCha20Poly1305::new(bytes.into()),
            id,
            subkeys,
        }
    }

    /// A 32-byte key for `purpose`, the same on every node that holds this secrets key and unrelated
    /// to it or to any other purpose's (SHA-256 over a hash of the key and the purpose).
    pub fn subkey(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&Sha256::digest(
            [self.subkeys.as_slice(), b":", purpose.as_bytes()].concat(),
        ));
        key
    }

    /// Reads a key file (64 hex characters). Refuses a file others can read.
    pub fn load(path: &Path) -> Result<SecretsKey, SecretsError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
                    path: path.to_owned(),
                    source,
                })?,
            );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|source| SecretsError::Read {
                    path: path.to_owned(),
                    source,
                })?
                .permissions()
                .mode()
                & 0o777;
            if crate::key_files::Readers::Owner.exposed(mode) {
                return Err(SecretsError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut_slice()).map_err(|_| {
            SecretsError::Malformed {
                path: path.to_owned(),
            }
        })?;
        Ok(SecretsKey::from_bytes(&bytes))
    }

    /// Makes a new random key file with mode 0600. Never overwrites.
    pub fn generate_file(path: &Path) -> Result<SecretsKey, SecretsError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(bytes.as_mut_slice());
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                SecretsError::Exists {
                    path: path.to_owned(),
                }
            } else {
                SecretsError::Write {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let mut text = hex::encode(bytes.as_slice());
        text.push('\n');
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        text.zeroize();
        written.map_err(|source| SecretsError::Write {
            path: path.to_owned(),
            source,
        })?;
        Ok(SecretsKey::from_bytes(&bytes))
    }

    /// The key's short public identifier (shown by `secrets rotate`, stored in each sealed blob).
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// Seals `plaintext` for `purpose` (e.g. `asset-credential:mri-01`).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let aad = self.aad(purpose);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            // XChaCha20-Poly1305 encryption fails only for messages longer than ~256 GiB.
            .expect("secret too large to seal");
        let mut out = Vec::with_capacity(MAGIC.len() + KEY_ID_LEN + NONCE_LEN + ciphertext.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens a blob sealed by [`SecretsKey::seal`] for the same `purpose`.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Secret, SecretsError> {
        let header = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;
        if sealed.len() < header || &sealed[..MAGIC.len()] != MAGIC {
            return Err(SecretsError::Corrupt);
        }
        let id = &sealed[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
        if id != self.id {
            return Err(SecretsError::WrongKey {
                found: hex::encode(id),
                expected: self.id(),
            });
        }
        let nonce = &sealed[MAGIC.len() + KEY_ID_LEN..header];
        let aad = self.aad(purpose);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: &sealed[header..],
                    aad: &aad,
                },
            )
            .map(Secret)
            .map_err(|_| SecretsError::Corrupt)
    }

    /// Whether `sealed` was sealed under this key (used by rotation to skip rows already done).
    pub fn sealed_by_me(&self, sealed: &[u8]) -> bool {
        sealed_key_id(sealed).is_some_and(|id| id == self.id())
    }

    fn aad(&self, purpose: &str) -> Vec<u8> {
        [MAGIC.as_slice(), &self.id, purpose.as_bytes()].concat()
    }
}

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) {
    // getrandom fails only when the OS offers no entropy source at all; no secret can be made safely
    // then, so stopping is the only correct answer.
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// `n` random bytes, hex-encoded (tokens, session ids).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fill_random(&mut buf);
    hex::encode(buf)
}

/// Plaintext secret bytes: zeroed on drop, never shown by `Debug`.
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let key = SecretsKey::generate_file(&path).unwrap();
        let sealed = key.seal("vendor-totp:alice", b"seed");
        assert_eq!(
            key.open("vendor-totp:alice", &sealed).unwrap().expose(),
            b"seed"
        );
        // moved to another row
        assert!(matches!(
            key.open("vendor-totp:bob", &sealed),
            Err(SecretsError::Corrupt)
        ));
        // altered
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            key.open("vendor-totp:alice", &bad),
            Err(SecretsError::Corrupt)
        ));
        // reloaded from disk, same key
        let again = SecretsKey::load(&path).unwrap();
        assert_eq!(again.id(), key.id());
        assert!(again.open("vendor-totp:alice", &sealed).is_ok());
        // another key
        let other = SecretsKey::generate_file(&dir.path().join("other.key")).unwrap();
        assert!(matches!(
            other.open("vendor-totp:alice", &sealed),
            Err(SecretsError::WrongKey { .. })
        ));
        assert_eq!(format!("{key:?}"), format!("SecretsKey(id {})", key.id()));
        assert_eq!(
            format!("{:?}", Secret::new(b"pw".to_vec())),
            "Secret(<redacted>)"
        );
    }

    #[test]
    fn refuses_overwrite_and_loose_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        SecretsKey::generate_file(&path).unwrap();
        assert!(matches!(
            SecretsKey::generate_file(&path),
            Err(SecretsError::Exists { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                SecretsKey::load(&path),
                Err(SecretsError::Permissions { .. })
            ));
        }
    }
}
