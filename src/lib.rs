//! chaperone: a privileged-access jump host for the vendors who maintain a hospital's medical devices.
//!
//! Entry points: `main.rs` parses the command line and calls into [`cli`]; `chaperone serve` runs
//! [`server::run`]. ARCHITECTURE.md has the map.

pub(crate) mod app;
pub(crate) mod atna;
pub mod audit;
pub(crate) mod audit_tail;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod error_text;
pub use chaperone_model::config;
pub mod evidence;
pub(crate) mod history;
pub(crate) mod hostkey;
pub mod identity;
pub mod key_files;
pub(crate) mod live;
pub(crate) mod mail;
pub use chaperone_model::model;
pub(crate) mod node;
pub(crate) mod ops;
pub mod policy;
pub(crate) mod recording;
pub mod search_index;
pub mod secrets;
pub(crate) mod server;
pub(crate) mod ssh;
pub mod store;
pub(crate) mod target;
pub(crate) mod tunnel;
pub(crate) mod web;
pub(crate) mod webhook;
