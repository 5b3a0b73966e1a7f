//! The library's one error type. Variants carry what an operator needs to act on them:
//! the path, the field, the id. `Error::hint` gives the next step where one exists.

use std::path::PathBuf;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside TradeVault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; `key` names the offending setting.
    #[error("invalid config: {source_name}: key `{key}`: {message}")]
    Config {
        /// The file or environment variable the value came from.
        source_name: String,
        /// `section.key` of the setting.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The configuration file cannot be read or parsed.
    #[error("read config file {path}: {message}")]
    ConfigFile {
        /// The config file.
        path: PathBuf,
        /// Why it cannot be used.
        message: String,
    },
    /// An I/O operation on a named path failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done, lowercase (`create data directory`).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("sqlite: {action}")]
    Sqlite {
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The database file failed its integrity check and is refused.
    #[error("database {path} is corrupt: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The first lines SQLite reported.
        detail: String,
    },
    /// A restored copy failed its check and was discarded.
    #[error("the restored database {path} is corrupt: {detail}")]
    RestoreCorrupt {
        /// The staged or restored file.
        path: PathBuf,
        /// The first lines SQLite reported.
        detail: String,
    },
    /// The database does not exist.
    #[error("no database at {path}")]
    NotInitialized {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Another process holds the store's lock.
    #[error("store {path} is in use by another tradevault process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The database was written by a newer TradeVault.
    #[error("database {path} has schema version {found}; this tradevault knows up to {known}")]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A request is invalid; nothing was written.
    #[error("{message}")]
    Invalid {
        /// Machine-readable code (`invalid_value`, `missing_field`, ...).
        code: &'static str,
        /// The field at fault, if any (`qty`, `[2].price`).
        field: Option<String>,
        /// Human-readable explanation.
        message: String,
    },
    /// A request references a row that does not exist; nothing was written.
    #[error("{message}")]
    UnknownReference {
        /// The referencing field (`order_id`, `signal_id`).
        field: String,
        /// Human-readable explanation.
        message: String,
    },
    /// An id was re-sent with different content; nothing was written.
    #[error("{message}")]
    Conflict {
        /// The id field (`trade_id`).
        field: String,
        /// Human-readable explanation.
        message: String,
    },
    /// The requested row does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `order "abc"`.
        what: String,
    },
    /// The writer refused a write because an earlier write or fsync failed.
    #[error("store is poisoned after a failed write and refuses writes until restarted: {cause}")]
    Poisoned {
        /// The failure that poisoned it.
        cause: String,
    },
    /// In synchronous replication, a committed write did not reach enough replicas in time. It is
    /// durable locally and replicates once the replicas are back; re-sending it is safe.
    #[error("committed locally but not yet on enough replicas: {cause}")]
    NotReplicated {
        /// Why the replicas did not confirm it.
        cause: String,
    },
    /// A replica (or the local log that feeds replicas) failed. Nothing in it holds credentials.
    #[error("replica {replica}: {message}")]
    Replica {
        /// Its name, or where it is (`Replica::describe`).
        replica: String,
        /// What was being done and what went wrong (`put db/0000/...ltx: 403 SignatureDoesNotMatch: ...`).
        message: String,
        /// What to check, when the failure says (an S3 error code, an unreachable endpoint).
        hint: Option<&'static str>,
    },
    /// The writer thread has stopped.
    #[error("store writer has stopped")]
    WriterStopped,
    /// The database is locked by another process beyond the busy timeout; nothing was written.
    #[error("the database is locked by another process: {message}")]
    Busy {
        /// What SQLite said.
        message: String,
    },
    /// An LTX file is malformed or damaged.
    #[error("ltx {name}")]
    Ltx {
        /// Which file.
        name: String,
        /// What is wrong with it.
        #[source]
        source: ltx::Error,
    },
    /// A backup operation failed or was refused; `code` says which way (`unknown_target`,
    /// `target_unreachable`, `corrupt_object`, `identity_required`, `not_found`, `prune_refused`,
    /// `integrity_failed`, `row_counts_differ`, ...). The message names the backup and object.
    #[error("{message}")]
    Backup {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong and where.
        message: String,
        /// What to do about it.
        hint: Option<&'static str>,
    },
    /// A bug: something that should not happen did. Details are in the log.
    #[error("internal error: {message}")]
    Internal {
        /// What happened.
        message: String,
    },
}

impl Error {
    /// Wraps an I/O error with the action and path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Whether it is a local file that was not there (a replica's file deleted by its
    /// compaction or retention between a listing and a read, say).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// Wraps a SQLite error with the action.
    pub fn sqlite(action: &'static str, source: rusqlite::Error) -> Self {
        Error::Sqlite { action, source }
    }

    /// A SQLite error reading the database at `path`: [`Error::Corrupt`] when SQLite says the
    /// file is not a database or is damaged, else [`Error::sqlite`] with the action.
    pub fn sqlite_at(
        path: &std::path::Path,
        action: &'static str,
        source: rusqlite::Error,
    ) -> Self {
        use rusqlite::ErrorCode as C;
        match source.sqlite_error_code() {
            Some(C::NotADatabase | C::DatabaseCorrupt) => Error::Corrupt {
                path: path.to_owned(),
                detail: source.to_string(),
            },
            _ => Error::sqlite(action, source),
        }
    }

    /// An invalid request with a code, a field and a message.
    pub fn invalid(
        code: &'static str,
        field: impl Into<Option<String>>,
        message: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A backup error with a code, a message and a hint.
    pub fn backup(
        code: &'static str,
        message: impl Into<String>,
        hint: Option<&'static str>,
    ) -> Self {
        Error::Backup {
            code,
            message: message.into(),
            hint,
        }
    }

    /// The machine-readable code of a backup or request error.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Error::Backup { code, .. } | Error::Invalid { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the error means the database or its disk may be damaged, so the writer must poison itself.
    pub fn is_fatal(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            Error::Io { .. }
            | Error::Corrupt { .. }
            | Error::Poisoned { .. }
            | Error::WriterStopped => true,
            Error::Sqlite { source, .. } => match source.sqlite_error_code() {
                Some(code) => matches!(
                    code,
                    C::SystemIoFailure
                        | C::DiskFull
                        | C::DatabaseCorrupt
                        | C::NotADatabase
                        | C::CannotOpen
                        | C::OutOfMemory
                        | C::ReadOnly
                        | C::FileLockingProtocolFailed
                ),
                // Errors that did not come from the engine (a type mismatch in our own code) are bugs,
                // not damage: the request fails, the store stays writable.
                None => false,
            },
            _ => false,
        }
    }

    /// The next thing an operator can do about this error, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Corrupt { .. } => Some(
                "the file was not opened for writing; restore it from a backup or replica, or run 'tradevault check --full' for details",
            ),
            Error::RestoreCorrupt { .. } => Some(
                "the copy was discarded and nothing else was changed; restore an earlier point (--timestamp or --txid), from another replica or from a backup; the source database may hold the same damage (sqlite3 FILE 'PRAGMA integrity_check' tells)",
            ),
            Error::NotInitialized { .. } => {
                Some("run 'tradevault init' or 'tradevault serve' to create it, or pass --data-dir")
            }
            Error::Locked { .. } => {
                Some("stop the other 'tradevault serve' first, or use another --data-dir")
            }
            Error::Poisoned { .. } => Some(
                "check the disk (space, errors in the kernel log), then restart 'tradevault serve'",
            ),
            Error::Config { .. } | Error::ConfigFile { .. } => {
                Some("see tradevault.example.toml for every key, its type and its default")
            }
            Error::SchemaTooNew { .. } => Some("run the newer tradevault that wrote this database"),
            Error::NotReplicated { .. } => Some(
                "the write is stored and will replicate when the replicas return; re-sending it is safe (identical re-sends answer 200); see 'tradevault status'",
            ),
            Error::Replica { hint, .. } | Error::Backup { hint, .. } => *hint,
            _ => None,
        }
    }
}
