//! The store's mirror of backup catalogs (`backup_metadata`, `backup_drills`): what each target
//! holds, copied in for queries. Each target's catalog is the truth; a mirror of a target is
//! replaced whole, so it never keeps a backup the target no longer has.

use crate::backup::{BackupRecord, DrillRecord};
use crate::error::{Error, Result};
use crate::exact::format_timestamp;

use super::Tx;

/// Replaces the mirror of `target` (at `url`) with `backups` and `drills`.
pub(crate) fn mirror(
    tx: &mut Tx<'_>,
    target: &str,
    url: &str,
    backups: &[BackupRecord],
    drills: &[DrillRecord],
) -> Result<()> {
    let err = |e| Error::sqlite("mirror backup catalog", e);
    tx.conn
        .execute("DELETE FROM backup_metadata WHERE target = ?1", [target])
        .map_err(err)?;
    tx.conn
        .execute("DELETE FROM backup_drills WHERE target = ?1", [target])
        .map_err(err)?;
    let time = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .map(format_timestamp)
            .unwrap_or_default()
    };
    let mut insert = tx
        .conn
        .prepare(
            "INSERT INTO backup_metadata (target, backup_id, database, backup_path, backup_time, \
             backup_type, tables, size_bytes, compressed_size_bytes, verified, verified_at, \
             parent_id, mirrored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .map_err(err)?;
    for b in backups {
        let tables = serde_json::to_string(&b.tables).unwrap_or_else(|_| "{}".into());
        let verified = b.verified.as_ref().filter(|v| v.ok);
        insert
            .execute(rusqlite::params![
                target,
                b.id,
                b.database,
                format!("{url}/backups/{}.manifest", b.id),
                time(b.created_ms),
                b.kind,
                tables,
                b.size_bytes as i64,
                b.stored_bytes as i64,
                i64::from(verified.is_some()),
                verified.map(|v| time(v.at_ms)),
                b.parent,
                tx.now_text,
            ])
            .map_err(err)?;
    }
    let mut insert = tx
        .conn
        .prepare(
            "INSERT OR REPLACE INTO backup_drills (target, database, at, backup_id, ok, \
             rto_seconds, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(err)?;
    for d in drills {
        insert
            .execute(rusqlite::params![
                target,
                d.database,
                time(d.at_ms),
                d.backup_id,
                i64::from(d.ok),
                d.rto_seconds,
                d.detail,
            ])
            .map_err(err)?;
    }
    tx.count("backup_metadata", backups.len() as u64);
    Ok(())
}
