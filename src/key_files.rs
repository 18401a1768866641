//! Who may read a file that holds a secret: the one rule `serve`, the commands that read such files and
//! `doctor` apply to each of them.
//!
//! The mode is judged on the open handle a caller then reads (`exposed`), so the file judged is the file
//! read.

/// Who besides its owner may read a file that holds a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// The owner only (0600): the keys chaperone makes and keeps itself (the secrets key, the SSH host
    /// key, the evidence signing key) and the SQLite database.
    Owner,
    /// The owner and the file's group (0640): files another system may manage and share with
    /// chaperone's group (the web TLS key from the hospital's PKI, the LDAP password file, the ATNA
    /// client key, the config).
    Group,
}

impl Readers {
    /// Whether `mode` lets someone read the file whom this rule does not.
    pub fn exposed(self, mode: u32) -> bool {
        mode & self.forbidden() != 0
    }

    fn forbidden(self) -> u32 {
        match self {
            Readers::Owner => 0o077,
            Readers::Group => 0o007,
        }
    }

    /// What to run to mend it.
    pub fn fix(self) -> &'static str {
        match self {
            Readers::Owner => "chmod 600",
            Readers::Group => "chmod o-rwx, or 600",
        }
    }

    /// Who may read it, in words.
    pub fn who(self) -> &'static str {
        match self {
            Readers::Owner => "only its owner may read it",
            Readers::Group => "others may read it",
        }
    }
}

/// `file`'s mode when `readers` forbids it (`None`: it is private enough).
pub fn exposed(file: &std::fs::File, readers: Readers) -> std::io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata()?.permissions().mode() & 0o777;
        Ok(readers.exposed(mode).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (file, readers);
        Ok(None)
    }
}

/// Reads `path` whole if `readers` allows its mode; an error that says which rule it broke otherwise.
pub fn read_private(path: &std::path::Path, readers: Readers) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    if let Some(mode) = exposed(&file, readers)? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "it is {mode:03o}, but {} ({})",
                readers.who(),
                readers.fix()
            ),
        ));
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut out)?;
    Ok(out)
}

/// Gives `path` the owner and group of `like`, the key file it is to replace: a rotation run as root (under
/// sudo) must leave a key the service's own user can still read. The data directory is the service's
/// to write, so neither is trusted as a path: `path` is opened without following a link and must be a
/// regular file with one name (a link planted there would have root give away whatever it points at),
/// and its owner is changed through that open handle; `like` is read without following a link.
pub fn owned_like(path: &std::path::Path, like: &std::path::Path) -> std::io::Result<()> {
    let file = open_nofollow(std::fs::OpenOptions::new().read(true), path)?;
    give_owner_of(&file, like)
}

/// Opens `path` with `options`, never through a symbolic link, and only if it is a regular file with one
/// name (no hard link to a file elsewhere): for files in a directory someone else may write.
pub fn open_nofollow(
    options: &mut std::fs::OpenOptions,
    path: &std::path::Path,
) -> std::io::Result<std::fs::File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
        let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
        let file = options.custom_flags(flags.bits()).open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.nlink() > 1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file with a single name; refusing to touch it",
            ));
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

/// Gives the open `file` the owner and group of `like` (read without following a link).
pub fn give_owner_of(file: &std::fs::File, like: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::symlink_metadata(like)?;
        std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))
    }
    #[cfg(not(unix))]
    {
        let _ = (file, like);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link planted where a key's companion file goes is neither followed nor given away, nor is a
    /// second name of another file.
    #[test]
    fn owned_like_touches_only_a_regular_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let like = dir.path().join("secrets.key");
        std::fs::write(&like, b"k").unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"t").unwrap();
        let link = dir.path().join("key.retired");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(owned_like(&link, &like).is_err());
        let hard = dir.path().join("key.pub");
        std::fs::hard_link(&target, &hard).unwrap();
        assert!(owned_like(&hard, &like).is_err());
        let own = dir.path().join("key");
        std::fs::write(&own, b"o").unwrap();
        owned_like(&own, &like).unwrap();
        let mut options = std::fs::OpenOptions::new();
        options.append(true);
        assert!(open_nofollow(&mut options, &link).is_err());
    }

    #[test]
    fn each_rule_refuses_what_it_says() {
        assert!(!Readers::Owner.exposed(0o600));
        assert!(Readers::Owner.exposed(0o640));
        assert!(Readers::Owner.exposed(0o604));
        assert!(!Readers::Group.exposed(0o640));
        assert!(Readers::Group.exposed(0o644));
        assert!(Readers::Group.exposed(0o601));
    }
}
