//! Restore from a replica: [`plan`] which LTX files reach the target, then [`apply`] them: download
//! the next files in parallel (bounded in files and bytes), decode each straight into a staging
//! file (large files on several threads), verify every file's checksum, check the result with
//! `PRAGMA integrity_check`, and only then give it its name, never over an existing file, `-wal`
//! or `-shm`. Any failure removes the staging file; nothing is ever written under the output name
//! before the whole database was verified and checked.
//!
//! Chains are planned with Litestream 0.5's rules (docs/ltx-litestream-0.5.17.md §6), so either
//! tool's replicas restore here: start from the newest usable snapshot (level 9), then keep taking,
//! across all levels, the file that continues the chain and reaches furthest. Files are applied in
//! chain order, so a later file's page replaces an earlier one's.
//!
//! A time `T` restores exactly or is refused, never silently older or newer. Each point the
//! engine ships (level 0) and each per-second file (level 1) has two times:
//! - its listed time (a file replica's mtime, an S3 object's `litestream-timestamp`, what
//!   Litestream reads): a lower bound of the commit times of the transactions it holds, after
//!   every commit of the files before it, so listed times increase along a chain;
//! - its header time: when it was made, after every commit it holds (a merged file keeps the
//!   latest of its inputs'). A file written by Litestream has one time for both, and so has a
//!   merge of 10 seconds or an hour (levels 2 and 3), listed when it was made so that
//!   Litestream's restore to a time never takes its later commits.
//!
//! A coarser file (levels 1 to 8) made after `T` is left out of the chain, so that the finer
//! files it overlaps can still reach the points inside it; if only it continues the chain past a
//! point made by `T`, `T` is refused as falling among its commits.
//!
//! The chain for `T` takes the files listed at or before `T` (Litestream: strictly before). The
//! state after its last file, `last`, is the state at `T` exactly when `T` is at or after
//! `last`'s header time: every commit it holds was made by then, and every commit of the files
//! after it later than `T` (they are listed after `T`). Otherwise `T` falls among `last`'s own
//! commits, and the restore is refused (`not_exact`) with the nearest points restorable
//! exactly: the chain without `last` and the chain with it, each with its TXID and the time it
//! was made, to be asked for with `--txid`. While commits arrive faster than files are made, a
//! file's first commit comes before the previous file was made, and no time between them is
//! exact: only the points themselves are.
//!
//! "Every commit of the files after it later than `T`" needs a file that continues the chain to
//! have two times. One whose header time is not after its listed time (Litestream's, or an older
//! TradeVault's) bounds its commits from above only, so a `T` after the chain's last point is
//! refused too, naming that point and the next (`plan::unbounded_next`).
//!
//! A `T` before the first snapshot, or after the newest file's listed time (commits after it may
//! not have reached the replica), is refused with the nearest points.

mod apply;
mod fetch;
pub mod inplace;
mod plan;
mod progress;

pub use apply::{Check, Options, Restored, apply, apply_with};
pub use plan::{
    HeaderTime, Plan, RELIST_MAX, plan, plan_after, plan_after_listed, plan_files, plan_listed,
};
pub use progress::{Progress, Stage};

/// Creates the staging file a restore into `output` fills before naming it `output`:
/// `<output>.tradevault-restore`, locked (exclusive `flock`) while this process holds it. One left
/// by a restore that was killed (its lock went with it) is taken over; one another restore holds
/// now is refused. The caller removes it when done.
pub fn create_staging(
    output: &std::path::Path,
) -> crate::Result<(std::path::PathBuf, std::fs::File)> {
    use std::fs::{File, TryLockError};
    let staging = std::path::PathBuf::from(format!("{}.tradevault-restore", output.display()));
    let io = |e| crate::Error::io("create staging file", &staging, e);
    let file = match File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&staging)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            use std::os::unix::fs::MetadataExt;
            // Only a regular file is taken over, never what a symbolic link points to.
            if !std::fs::symlink_metadata(&staging).map_err(io)?.is_file() {
                return Err(io(std::io::Error::other("not a regular file")));
            }
            let f = File::options()
                .read(true)
                .write(true)
                .open(&staging)
                .map_err(io)?;
            match f.try_lock() {
                // Still the file at that name (not a link swapped in, nor a file its restore
                // has just named and let go of), or leave it.
                Ok(())
                    if std::fs::symlink_metadata(&staging)
                        .map_or(true, |m| m.ino() != f.metadata().map_or(0, |fm| fm.ino())) =>
                {
                    return Err(crate::Error::invalid(
                        "restore_running",
                        None,
                        format!(
                            "{} changed while this restore took it over; try again",
                            staging.display()
                        ),
                    ));
                }
                Ok(()) => {
                    tracing::info!(path = %staging.display(), "taking over the staging file of a restore that stopped");
                    f.set_len(0).map_err(io)?;
                    // What the check's SQLite connections leave when killed (empty: they never write).
                    for suffix in ["-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", staging.display()));
                    }
                    return Ok((staging, f));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(crate::Error::invalid(
                        "restore_running",
                        None,
                        format!(
                            "another restore into {} is running (it holds {})",
                            output.display(),
                            staging.display()
                        ),
                    ));
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        Err(e) => return Err(io(e)),
    };
    file.try_lock().map_err(|e| match e {
        TryLockError::Error(e) => io(e),
        TryLockError::WouldBlock => io(std::io::Error::other("locked by another process")),
    })?;
    Ok((staging, file))
}

/// Removes a database file and the files SQLite keeps beside it (`-wal`, `-shm`, `-journal`),
/// ignoring the ones that are not there: for scratch and staging copies.
pub fn remove_database_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

/// What to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest state on the replica.
    Latest,
    /// The state right after this transaction.
    Txid(u64),
    /// The state at this time (milliseconds since the epoch), if it can be restored exactly.
    Time(i64),
    /// The newest point whose file was made at or before this time: every commit it holds was
    /// made by then, and commits made later up to this time may be missing (asked for, so never
    /// silently older).
    AtOrBefore(i64),
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_staging_file_left_by_a_killed_restore_is_taken_over_and_a_held_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = dir.path().join("ko.db");
        // Left by a restore that was killed: no one holds its lock.
        std::fs::write(
            dir.path().join("ko.db.tradevault-restore"),
            b"half a database",
        )
        .expect("write");
        let (staging, held) = super::create_staging(&output).expect("taken over");
        assert_eq!(std::fs::metadata(&staging).expect("staging").len(), 0);
        // Held by a restore running now (this one): refused, and left alone.
        let err = super::create_staging(&output).expect_err("held");
        assert!(err.to_string().contains("another restore"), "{err}");
        drop(held);
        assert!(staging.exists());
        // A symbolic link in its place is never followed: what it points to stays whole.
        let precious = dir.path().join("precious");
        std::fs::write(&precious, b"keep").expect("write");
        let linked = dir.path().join("linked.db");
        std::os::unix::fs::symlink(&precious, dir.path().join("linked.db.tradevault-restore"))
            .expect("symlink");
        assert!(super::create_staging(&linked).is_err());
        assert_eq!(std::fs::read(&precious).expect("read"), b"keep");
    }
}
