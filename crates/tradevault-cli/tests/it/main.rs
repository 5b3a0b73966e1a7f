//! One integration binary that drives the built `tradevault` binary: the HTTP API, the CLI, and
//! crash tests with SIGKILL.

mod api;
mod backup;
mod cli;
mod common;
mod crash;
mod drill;
mod engine;
mod faults;
mod inplace;
mod jobs;
mod replicate;
mod restore;
