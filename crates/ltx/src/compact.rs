//! Compaction: several contiguous LTX files merged into one that holds, for each page, its
//! newest version. Applying the result equals applying the inputs in order.

use std::collections::BTreeMap;

use crate::{Decoder, Encoder, Error, Header, Result, lock_pgno};

/// Merges `inputs` (whole files, in TXID order, each continuing the one before) into one file
/// covering `first.min_txid..=last.max_txid`, stamped with the latest of the inputs' timestamps
/// (a file's header time is when it was made, after every commit it holds). Every input is
/// verified; pages past the last file's commit size (a shrink) are dropped.
pub fn compact(inputs: &[&[u8]]) -> Result<Vec<u8>> {
    let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut merged: Option<Header> = None;
    for bytes in inputs {
        let mut d = Decoder::new(*bytes)?;
        let h = *d.header();
        if let Some(m) = &merged {
            if h.page_size != m.page_size {
                return Err(Error::Header(format!(
                    "cannot merge {}-byte pages into a file of {}-byte pages",
                    h.page_size, m.page_size
                )));
            }
            if h.min_txid > m.max_txid + 1 || h.max_txid <= m.max_txid {
                return Err(Error::Header(format!(
                    "files are not contiguous: {}..={} after {}..={}",
                    h.min_txid, h.max_txid, m.min_txid, m.max_txid
                )));
            }
        }
        let mut buf = vec![0u8; h.page_size as usize];
        while let Some(pgno) = d.next_page(&mut buf)? {
            pages.insert(pgno, buf.clone());
        }
        d.finish()?;
        merged = Some(match merged {
            None => h,
            Some(m) => Header {
                commit: h.commit,
                max_txid: h.max_txid,
                timestamp_ms: m.timestamp_ms.max(h.timestamp_ms),
                ..m
            },
        });
    }
    let Some(m) = merged else {
        return Err(Error::Header("nothing to compact".into()));
    };
    let lock = lock_pgno(m.page_size);
    let header = Header::new(
        m.page_size,
        m.commit,
        m.min_txid,
        m.max_txid,
        m.timestamp_ms,
    );
    let mut enc = Encoder::new(Vec::new(), header)?;
    for (pgno, data) in pages.range(1..=m.commit) {
        if *pgno != lock {
            enc.encode_page(*pgno, data)?;
        }
    }
    Ok(enc.finish(0)?.0)
}
