//! The key that signs evidence bundles: an ed25519 key in OpenSSH format (`[recording] signing_key`,
//! mode 0600, like the host key), whose signatures are SSHSIG (`ssh-keygen -Y sign`), namespace
//! `chaperone-evidence`, so an inspector verifies a bundle with `ssh-keygen -Y verify` alone.
//!
//! Entry points: [`Signer::load`] (what `evidence export` and a download use; a missing key is an
//! error, never made on the spot), [`Signer::create`] (`init`, and `evidence signer` on a data
//! directory made before bundles existed), [`rotate`], [`allowed_signers`] (the lines to hand an
//! inspector: the current key and every retired one) and [`verify`].
//!
//! Why a key is never created by an export: the point of the signature is a public key the inspector
//! was given beforehand, through a channel of their own (`chaperone evidence signer`). A key made by
//! the first export would arrive with the bundle it signs, and on several nodes each would make its
//! own. `init` makes it; for an older data directory, `evidence signer` makes it (once: a key is never
//! replaced except by `--rotate`) and prints the line to hand out in the same step.
//!
//! Rotation keeps every bundle verifiable: the retired key's allowed_signers line is appended to
//! `SIGNING_KEY.retired` (public keys only) and the new key replaces the old file, whose private half
//! is gone. `allowed_signers` prints both, so one file verifies bundles from before and after.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{HashAlg, LineEnding, PublicKey, SshSig};
use russh::keys::{Algorithm, PrivateKey};

/// The SSHSIG namespace of evidence bundles (`ssh-keygen -n`).
pub const NAMESPACE: &str = "chaperone-evidence";
/// The principal the allowed_signers line names (`ssh-keygen -I`).
pub const PRINCIPAL: &str = "chaperone";

/// Why the signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// There is no key at the configured path.
    #[error(
        "no evidence signing key at {}: create it with `chaperone evidence signer` and hand the line it \
         prints to your inspectors",
        path.display()
    )]
    Missing { path: PathBuf },
    /// The key file is readable by others than its owner.
    #[error(
        "evidence signing key {} is readable by others (mode {mode:o}): run `chmod 600` on it",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    /// The key file is not an unencrypted OpenSSH ed25519 key.
    #[error("evidence signing key {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// A key exists where one was to be created.
    #[error(
        "evidence signing key {} already exists: a key is never replaced (use `chaperone evidence signer --rotate`)",
        path.display()
    )]
    Exists { path: PathBuf },
    /// Reading or writing a key file failed.
    #[error("evidence signing key {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The ssh-key crate refused (generating, encoding, signing).
    #[error("evidence signature")]
    Ssh(#[source] russh::keys::ssh_key::Error),
}

/// The loaded signing key.
#[derive(Debug)]
pub struct Signer {
    key: PrivateKey,
}

impl Signer {
    /// Loads the key at `path`: it must exist, be readable by its owner only, and be an unencrypted
    /// ed25519 key in OpenSSH format.
    pub fn load(path: &Path) -> Result<Signer, SignerError> {
        let io = |source| SignerError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SignerError::Missing {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(io(e)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if crate::key_files::Readers::Owner.exposed(mode) {
                return Err(SignerError::Exposed {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(io)?;
        let invalid = |reason: String| SignerError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let key = PrivateKey::from_openssh(text.trim_end())
            .map_err(|e| invalid(format!("not an OpenSSH private key ({e})")))?;
        if key.is_encrypted() {
            return Err(invalid(
                "encrypted with a passphrase; it must not be".into(),
            ));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(invalid(format!(
                "a {} key; it must be ed25519",
                key.algorithm()
            )));
        }
        Ok(Signer { key })
    }

    /// Creates a new key at `path` (mode 0600, never replacing a file; its public half beside it as
    /// `PATH.pub`).
    pub fn create(path: &Path) -> Result<Signer, SignerError> {
        let signer = Signer::generate()?;
        signer.write_new(path)?;
        Ok(signer)
    }

    /// [`Signer::create`] on a running bastion's data directory: the key and its public half take the
    /// owner of `like` (the secrets key, which the service reads), so one made under sudo is still
    /// readable by the service's own user.
    pub fn create_owned_like(path: &Path, like: &Path) -> Result<Signer, SignerError> {
        let signer = Signer::create(path)?;
        for made in [path.to_path_buf(), public_path(path)] {
            crate::key_files::owned_like(&made, like)
                .map_err(|source| SignerError::Io { path: made, source })?;
        }
        Ok(signer)
    }

    fn generate() -> Result<Signer, SignerError> {
        let mut key =
            PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(SignerError::Ssh)?;
        key.set_comment(NAMESPACE);
        Ok(Signer { key })
    }

    /// Writes the key to `path` (0600) and its public half to `PATH.pub` (0644), never replacing one.
    fn write_new(&self, path: &Path) -> Result<(), SignerError> {
        let pem = self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(SignerError::Ssh)?;
        write_new(path, pem.as_bytes(), 0o600)?;
        let public = self
            .key
            .public_key()
            .to_openssh()
            .map_err(SignerError::Ssh)?;
        let pub_path = public_path(path);
        // A stale public half (from a key rotated away) is replaced: it is derived, not a key.
        let _ = std::fs::remove_file(&pub_path);
        write_new(&pub_path, format!("{public}\n").as_bytes(), 0o644)
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The allowed_signers line for this key: `chaperone namespaces="chaperone-evidence" ssh-ed25519 …`.
    pub fn allowed_signers_line(&self) -> Result<String, SignerError> {
        signers_line(self.key.public_key())
    }

    /// Signs `message` (a bundle's SHA256SUMS): an SSHSIG signature in PEM armour, what `ssh-keygen -Y
    /// sign -n chaperone-evidence` writes.
    pub fn sign(&self, message: &[u8]) -> Result<String, SignerError> {
        let sig = self
            .key
            .sign(NAMESPACE, HashAlg::Sha512, message)
            .map_err(SignerError::Ssh)?;
        let mut pem = sig.to_pem(LineEnding::LF).map_err(SignerError::Ssh)?;
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        Ok(pem)
    }
}

fn signers_line(key: &PublicKey) -> Result<String, SignerError> {
    let mut key = key.clone();
    key.set_comment("");
    let public = key.to_openssh().map_err(SignerError::Ssh)?;
    Ok(format!(
        "{PRINCIPAL} namespaces=\"{NAMESPACE}\" {}",
        public.trim_end()
    ))
}

fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Where the retired keys' allowed_signers lines are kept.
pub fn retired_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".retired");
    PathBuf::from(name)
}

/// What a rotation did.
#[derive(Debug)]
pub struct Rotated {
    pub old_fingerprint: String,
    pub new: Signer,
}

/// Replaces the key at `path` by a new one: the old key's allowed_signers line is appended to
/// `PATH.retired` first (so bundles it signed still verify), then the new key, written beside it,
/// takes its place (a rename: at every moment there is one whole key at `path`).
pub fn rotate(path: &Path, now: i64) -> Result<Rotated, SignerError> {
    let old = Signer::load(path)?;
    let new = Signer::generate()?;
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let staged = PathBuf::from(staged);
    let pem = new
        .key
        .to_openssh(LineEnding::LF)
        .map_err(SignerError::Ssh)?;
    write_new(&staged, pem.as_bytes(), 0o600)?;
    if let Err(source) = crate::key_files::owned_like(&staged, path) {
        let _ = std::fs::remove_file(&staged);
        return Err(SignerError::Io {
            path: staged,
            source,
        });
    }
    let retired = retired_path(path);
    let line = format!(
        "# retired on {} ({})\n{}\n",
        crate::clock::format_time(now),
        old.fingerprint(),
        old.allowed_signers_line()?
    );
    // The retired keys' lines and the public key too stay the service's (a rotation under sudo would
    // otherwise leave files the service cannot read, or a later rotation as the service cannot write).
    let appended = append(&retired, line.as_bytes(), path);
    let renamed = appended.and_then(|()| {
        std::fs::rename(&staged, path).map_err(|source| SignerError::Io {
            path: path.to_owned(),
            source,
        })
    });
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    let public = new
        .key
        .public_key()
        .to_openssh()
        .map_err(SignerError::Ssh)?;
    let pub_path = public_path(path);
    let _ = std::fs::remove_file(&pub_path);
    write_new(&pub_path, format!("{public}\n").as_bytes(), 0o644)?;
    crate::key_files::owned_like(&pub_path, path).map_err(|source| SignerError::Io {
        path: pub_path.clone(),
        source,
    })?;
    Ok(Rotated {
        old_fingerprint: old.fingerprint(),
        new,
    })
}

/// The allowed_signers text that verifies every bundle signed with the key at `path`, now or before a
/// rotation: the current key's line, then the retired ones (with `#` comments saying when).
pub fn allowed_signers(current: &Signer, path: &Path) -> Result<String, SignerError> {
    let mut text = format!("{}\n", current.allowed_signers_line()?);
    match std::fs::read_to_string(retired_path(path)) {
        Ok(retired) => text.push_str(&retired),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SignerError::Io {
                path: retired_path(path),
                source,
            });
        }
    }
    Ok(text)
}

/// The keys of an allowed_signers text trusted for bundles: lines whose principals include
/// `chaperone` (or `*`) and whose `namespaces`, if given, include `chaperone-evidence`. Lines that are
/// not understood are skipped.
pub fn trusted_keys(allowed_signers: &str) -> Vec<PublicKey> {
    let mut keys = Vec::new();
    for line in allowed_signers.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(principals) = words.next() else {
            continue;
        };
        if !principals
            .split(',')
            .any(|p| p == PRINCIPAL || p == "*" || p == "\"*\"")
        {
            continue;
        }
        let rest: Vec<&str> = words.collect();
        // Options come before the key type, when there are any.
        let key_at = rest
            .iter()
            .position(|w| w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("sk-"));
        let Some(key_at) = key_at else { continue };
        let options = rest[..key_at].join(" ");
        if let Some(ns) = options
            .split(',')
            .find_map(|o| o.trim().strip_prefix("namespaces="))
            && !ns.trim_matches('"').split(',').any(|n| n == NAMESPACE)
        {
            continue;
        }
        let Some(data) = rest.get(key_at + 1) else {
            continue;
        };
        if let Ok(key) = PublicKey::from_openssh(&format!("{} {data}", rest[key_at])) {
            keys.push(key);
        }
    }
    keys
}

/// Why a signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum BadSignature {
    /// Not an SSHSIG signature.
    #[error("SHA256SUMS.sig is not an SSH signature ({0})")]
    Unreadable(String),
    /// Signed by a key the allowed signers do not name.
    #[error("SHA256SUMS.sig was made by key {fingerprint}, which the allowed signers do not name")]
    UnknownKey { fingerprint: String },
    /// The signature does not match the message (or its namespace is not `chaperone-evidence`).
    #[error(
        "SHA256SUMS.sig does not match SHA256SUMS (key {fingerprint}): SHA256SUMS was altered, or it \
         was not signed for chaperone-evidence"
    )]
    Mismatch { fingerprint: String },
}

/// Checks `signature` (PEM SSHSIG) over `message` against `trusted` keys; the signer's fingerprint.
pub fn verify(
    trusted: &[PublicKey],
    message: &[u8],
    signature: &str,
) -> Result<String, BadSignature> {
    let sig = SshSig::from_pem(signature.trim_end())
        .map_err(|e| BadSignature::Unreadable(e.to_string()))?;
    let signer = PublicKey::from(sig.public_key().clone());
    let fingerprint = signer.fingerprint(HashAlg::Sha256).to_string();
    let Some(key) = trusted.iter().find(|k| k.key_data() == signer.key_data()) else {
        return Err(BadSignature::UnknownKey { fingerprint });
    };
    key.verify(NAMESPACE, message, &sig)
        .map_err(|_| BadSignature::Mismatch {
            fingerprint: fingerprint.clone(),
        })?;
    Ok(fingerprint)
}

/// Writes a new file with `mode`, never replacing one.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SignerError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            SignerError::Exists {
                path: path.to_owned(),
            }
        } else {
            SignerError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| SignerError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Appends `bytes` to `path` (made 0644 if missing), never through a link: the data directory is the
/// service's to write, and a rotation may run as root. The file then takes `like`'s owner, through the
/// same open handle.
fn append(path: &Path, bytes: &[u8], like: &Path) -> Result<(), SignerError> {
    let io = |source| SignerError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
    let mut file = crate::key_files::open_nofollow(&mut options, path).map_err(io)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| crate::key_files::give_owner_of(&file, like))
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_a_named_key_and_the_same_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence_ed25519_key");
        let signer = Signer::create(&path).unwrap();
        assert!(matches!(
            Signer::create(&path),
            Err(SignerError::Exists { .. })
        ));
        let loaded = Signer::load(&path).unwrap();
        assert_eq!(loaded.fingerprint(), signer.fingerprint());
        let sig = signer.sign(b"sums\n").unwrap();
        assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----"));
        let trusted = trusted_keys(&allowed_signers(&signer, &path).unwrap());
        assert_eq!(trusted.len(), 1);
        assert_eq!(
            verify(&trusted, b"sums\n", &sig).unwrap(),
            signer.fingerprint()
        );
        assert!(matches!(
            verify(&trusted, b"sumz\n", &sig),
            Err(BadSignature::Mismatch { .. })
        ));
        assert!(matches!(
            verify(&[], b"sums\n", &sig),
            Err(BadSignature::UnknownKey { .. })
        ));
        // Another principal, or another namespace, is not trusted.
        let line = signer.allowed_signers_line().unwrap();
        assert!(trusted_keys(&line.replacen("chaperone ", "someone ", 1)).is_empty());
        assert!(trusted_keys(&line.replace(NAMESPACE, "file")).is_empty());

        // Rotation: the old key's line stays trusted, the file holds the new key.
        let rotated = rotate(&path, 1_763_900_000).unwrap();
        assert_eq!(rotated.old_fingerprint, signer.fingerprint());
        let now = Signer::load(&path).unwrap();
        assert_ne!(now.fingerprint(), signer.fingerprint());
        let all = allowed_signers(&now, &path).unwrap();
        let trusted = trusted_keys(&all);
        assert_eq!(trusted.len(), 2, "{all}");
        verify(&trusted, b"sums\n", &sig).unwrap();
        verify(&trusted, b"new\n", &now.sign(b"new\n").unwrap()).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_key_readable_by_others_or_missing_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(matches!(
            Signer::load(&path),
            Err(SignerError::Missing { .. })
        ));
        Signer::create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Signer::load(&path),
            Err(SignerError::Exposed { .. })
        ));
    }
}
