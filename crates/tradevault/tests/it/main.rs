//! Component tests of the library: a real SQLite store in a temp dir, no HTTP.

mod litestream;
mod replicate;
mod restore;
mod store;
mod wal;
