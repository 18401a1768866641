//! A real terminal for tests that must see what a person sees: a program runs in a detached `tmux`
//! session on a private server socket (`tmux -S`), `screen` reads the pane (`capture-pane`, scroll-back
//! included) and `type_line` types into it (`send-keys`). UTF-8 throughout (`-u`, `LC_ALL=C.UTF-8`), so
//! half-block drawings arrive as drawn. The server is killed when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Tmux {
    socket: PathBuf,
}

/// Whether tmux is installed.
pub fn available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Tmux {
    /// Runs `shell_command` (`sh -c`) in a new `width`×`height` terminal; its socket lives in `dir`.
    pub fn start(dir: &Path, shell_command: &str, width: u16, height: u16) -> Tmux {
        let socket = dir.join(format!("tmux-{}", chaperone::secrets::random_hex(4)));
        let t = Tmux { socket };
        let out = t
            .tmux()
            .args(["new-session", "-d", "-x", &width.to_string()])
            .args(["-y", &height.to_string(), shell_command])
            .output()
            .expect("tmux");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-u")
            .arg("-S")
            .arg(&self.socket)
            .env("LC_ALL", "C.UTF-8")
            .env_remove("TMUX");
        cmd
    }

    /// The pane's text now, scroll-back included, one line per terminal line (trailing blanks cut).
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-S", "-", "-E", "-"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` and Enter, as a person would.
    pub fn type_line(&self, text: &str) {
        for keys in [&["-l", text][..], &["Enter"][..]] {
            let status = self
                .tmux()
                .arg("send-keys")
                .args(keys)
                .status()
                .expect("tmux send-keys");
            assert!(status.success(), "tmux send-keys {keys:?}");
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.socket);
    }
}
