//! chaperone: a privileged-access jump host for the vendors who maintain a hospital's medical devices.
//!
//! Entry points: `main.rs` parses the command line and calls into [`cli`]; `chaperone serve` runs
//! [`server::run`]. ARCHITECTURE.md has the map.

pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub use chaperone_model::config;
pub mod evidence;
pub mod hostkey;
pub mod identity;
pub mod live;
pub use chaperone_model::model;
pub mod node;
pub mod policy;
pub mod recording;
pub mod secrets;
pub mod server;
pub mod ssh;
pub mod store;
pub mod target;
pub mod tunnel;
pub mod web;
pub mod webhook;
