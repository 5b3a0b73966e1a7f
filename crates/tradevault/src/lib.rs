//! TradeVault keeps a trading team's data safe: a journal of trades, orders, positions (with
//! their audit trail), signals, logs and bot state on embedded SQLite, written through one
//! durable group-committing writer and served over an HTTP API.
//!
//! - [`config`]: typed settings, defaults, TOML and environment overrides.
//! - [`store`]: the journal: open, migrations, the single writer, queries, stats and checks.
//! - [`api`]: what the HTTP API accepts: field specs that validate JSON into [`store::model`] types.
//! - [`http`]: the axum router, handlers, OpenAPI document, and a small HTTP client.
//! - [`exact`]: exact decimals and timestamps at the edges.
//! - [`metrics`]: every metric name.
//! - [`replica`]: places that receive LTX files (a directory or an S3 bucket), in Litestream's layout.
//! - [`wal`]: committed transactions read from a SQLite WAL, verified frame by frame.
//! - [`replicate`]: ships a database's transactions to a replica as LTX files.
//! - [`restore`]: plans, verifies and assembles a database from a replica, to a time or a TXID.
//! - [`backup`]: online, compressed, checksummed (optionally encrypted) backups, incremental by page;
//!   their catalog on each target, verification and retention.
//! - [`integrity`]: `PRAGMA integrity_check`'s verdict on a restored or scratch copy, in about
//!   `quick_check`'s time.
//! - [`clock`]: time is handed in, never read from the wall inside the library.

pub mod api;
pub mod backup;
pub mod clock;
pub mod config;
pub mod drill;
pub mod error;
pub mod exact;
mod held;
pub mod http;
pub mod integrity;
pub mod jobs;
pub mod metrics;
pub mod replica;
pub mod replicate;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod wal;

pub use crate::config::Config;
pub use crate::error::{Error, Result};
pub use crate::store::Store;
