//! chaperone's one integration-test binary: real parts (the chaperone binary, OpenSSH, sshd, PostgreSQL)
//! driven from topic modules. `support/` holds the harness.
//!
//! When `CHAPERONE_REQUIRE_ALL=1` (set by `.ci/run`), a test whose real part is missing fails instead of
//! skipping.

// Test helpers panic on purpose: a failed set-up step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod approvals;
mod browser;
mod cli;
mod evidence;
mod hostile;
mod interop;
mod nodes;
mod passkeys;
mod search;
mod ssh;
mod store;
mod support;
mod tunnels;
mod web_limits;
mod webhook;
