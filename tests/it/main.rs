//! chaperone's one integration-test binary: real parts (the chaperone binary, OpenSSH, sshd, PostgreSQL)
//! driven from topic modules. `support/` holds the harness.
//!
//! When `CHAPERONE_REQUIRE_ALL=1` (set by `.ci/run`), a test whose real part is missing fails instead of
//! skipping.

// Test helpers panic on purpose: a failed set-up step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod approvals;
mod atna;
mod browser;
mod cli;
mod demo;
mod evidence;
mod hostile;
mod interop;
mod ldap;
mod mail;
mod nodes;
mod ops;
mod packaging;
mod passkeys;
mod search;
mod ssh;
mod store;
mod support;
mod tunnels;
mod web_limits;
mod webhook;
