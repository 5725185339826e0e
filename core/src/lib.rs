//! `orchestrator-core`: what both `orchestratord` and `orchctl` need, with no runtime, no database
//! and no network in it.
//!
//! - [`agent`]: how one specialist agent is run, and the built-in set.
//! - [`config`]: the TOML config, validated in one place for the daemon and `orchctl config check`.
//! - [`routing`]: routing and approval decisions, pure.
//! - [`fixtures`]: the synthetic gate's fixtures, compiled in.
//! - [`paths`]: default socket and state locations.
//! - [`credentials`]: the bearer token and `orchctl init`'s files.

pub mod agent;
pub mod config;
pub mod credentials;
pub mod fixtures;
pub mod paths;
pub mod routing;
