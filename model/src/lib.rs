//! chaperone's domain model: the plain types everything else speaks (vendors, assets, services, grants,
//! requests, sessions, the typed configuration), and the grammars that turn text a person or a peer typed
//! into them: the config file ([`config::Config::load`]), names and service specs
//! ([`model::check_name`]), durations and sizes, SSH login names ([`login::Login::parse`]) and the
//! vendors' `request` command line ([`request::parse`]).
//!
//! The root crate re-exports `config` and `model` at its root and `login` under `ssh`, so those paths read
//! as before.
//!
//! Architecture Invariant: no network, no database, no async, no SSH; the only I/O is `Config::load`
//! reading its file. Light dependencies only (serde, toml, http's URI type, thiserror): every parser here
//! reads hostile text, and the fuzz targets in `fuzz/` build this crate, not the server.

pub mod action;
pub mod config;
pub mod login;
pub mod model;
pub mod request;
pub mod smtp_reply;
