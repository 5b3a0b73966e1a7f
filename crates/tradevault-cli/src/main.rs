//! The `tradevault` command: parse arguments, load config, start logging, dispatch, and map
//! errors to exit codes (0 ok, 1 failure, 2 usage or config).

/// `println!` for data on stdout, without its panic when the reader has gone (`tradevault status |
/// head -1`): see [`print_out`].
macro_rules! outln {
    () => {
        $crate::print_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::print_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// TradeVault: a durable trading store on embedded SQLite.
#[derive(Debug, Parser)]
#[command(name = "tradevault", version, about, propagate_version = true)]
struct Cli {
    /// TOML config file (see tradevault.example.toml); TRADEVAULT_<SECTION>_<KEY> variables override it.
    #[arg(long, global = true, env = "TRADEVAULT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the store (default ./data); the database is DIR/tradevault.db.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open the store and serve the HTTP API.
    Serve(cmd::serve::Args),
    /// Create the store (or migrate it) and exit.
    Init(cmd::init::Args),
    /// Row counts, file sizes, pages, integrity and schema version.
    Stats(cmd::stats::Args),
    /// Check integrity, foreign keys and positions against fills; exit 1 if anything is wrong.
    Check(cmd::check::Args),
    /// Ship every transaction of a SQLite database (in WAL mode) to replicas, as a sidecar.
    Replicate(cmd::replicate::Args),
    /// Replication of the store and every [[database]]: position, lag, errors, restorable window.
    Status(cmd::status::Args),
    /// Backups: create, list, show, stats, verify, prune.
    Backup(cmd::backup::Args),
    /// Rebuild a database from a replica (ours or Litestream's), to the latest state, a TXID or a
    /// time, into a new file or in place.
    Restore(cmd::restore::Args),
    /// Prove each database restorable: restore its latest state into scratch and check it.
    Drill(cmd::drill::Args),
}

/// Set once stdout's reader has gone: nothing more is written there.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes to stdout. Once its reader has gone (a broken pipe), output stops quietly and the
/// command finishes with its own exit status, as if everything had been read; any other failure
/// to write (a full disk under a redirect) ends the process with status 1.
pub fn print_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    match std::io::stdout().lock().write_fmt(args) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tradevault: write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// A failure that is the user's to fix in how they called us: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(cli.config.as_deref(), cli.data_dir, args),
        Command::Init(args) => cmd::init::run(cli.config.as_deref(), cli.data_dir, args),
        Command::Stats(args) => cmd::stats::run(cli.config.as_deref(), cli.data_dir, args),
        Command::Check(args) => cmd::check::run(cli.config.as_deref(), cli.data_dir, args),
        Command::Replicate(args) => cmd::replicate::run(cli.config.as_deref(), cli.data_dir, args),
        Command::Backup(args) => cmd::backup::run(cli.config.as_deref(), cli.data_dir, args),
        Command::Restore(args) => cmd::restore::run(cli.config.as_deref(), cli.data_dir, args),
        Command::Status(args) => cmd::status::run(cli.config.as_deref(), cli.data_dir, args),
        Command::Drill(args) => cmd::drill::run(cli.config.as_deref(), cli.data_dir, args),
    };
    match result {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

/// Prints `tradevault: <chain>` and a hint, and picks the exit code.
fn report(err: &anyhow::Error) -> ExitCode {
    use std::io::Write;
    // Not eprintln!: a closed stderr must not turn an error into a panic.
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "tradevault: {err:#}");
    let lib = err
        .chain()
        .find_map(|e| e.downcast_ref::<tradevault::Error>());
    if let Some(hint) = lib.and_then(tradevault::Error::hint) {
        let _ = writeln!(stderr, "hint: {hint}");
    }
    let usage = err
        .chain()
        .any(|e| e.downcast_ref::<UsageError>().is_some())
        || matches!(
            lib,
            Some(tradevault::Error::Config { .. } | tradevault::Error::ConfigFile { .. })
        );
    if usage {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}
