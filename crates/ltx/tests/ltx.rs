//! LTX round trips, damage detection, and files written by the real Litestream 0.5.17.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ltx::{
    Decoder, Encoder, Error, Header, Page, RangeDecoder, ReadAt, SliceDecoder, page_checksum,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/ltx-litestream-0.5.17")
}

fn level_files(level: u32) -> Vec<PathBuf> {
    let dir = fixtures().join("replica/ltx").join(level.to_string());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(ltx::parse_file_name)
                .is_some()
        })
        .collect();
    files.sort();
    files
}

fn decode_file(path: &Path) -> (Header, Vec<Page>) {
    let bytes = std::fs::read(path).expect("read fixture");
    let (header, pages, _) =
        Decoder::decode_all(&bytes[..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let in_parts = decode_in_parts(&bytes, 2).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        in_parts == (header, pages.clone()),
        "{}: the slice decoder agrees",
        path.display()
    );
    (header, pages)
}

/// Decodes `bytes` with [`SliceDecoder`], cut into `parts` parts decoded in reverse order (as
/// threads may finish), and verifies it: the same result as [`Decoder::decode_all`] or an error.
/// The same bytes read at offsets, a few frames at a time, must give the same answer.
fn decode_in_parts(bytes: &[u8], parts: usize) -> ltx::Result<(Header, Vec<Page>)> {
    let in_memory = decode_parts(SliceDecoder::new(bytes), parts);
    for window in [1, 333 * parts, 5_000] {
        let read = Unsliced(bytes.to_vec());
        let at_offsets = decode_parts(
            RangeDecoder::new(&read).map(|d| d.with_window(window)),
            parts,
        );
        assert_eq!(
            at_offsets.as_ref().ok(),
            in_memory.as_ref().ok(),
            "read at offsets, {window} bytes at a time, in {parts} parts"
        );
    }
    in_memory
}

/// Bytes a decoder can only read at offsets, as it reads a file.
struct Unsliced(Vec<u8>);

impl ReadAt for Unsliced {
    fn size(&self) -> std::io::Result<u64> {
        self.0.size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}

fn decode_parts<S: ReadAt + ?Sized>(
    decoder: ltx::Result<RangeDecoder<'_, S>>,
    parts: usize,
) -> ltx::Result<(Header, Vec<Page>)> {
    let d = decoder?;
    let n = d.page_count();
    let bounds: Vec<usize> = (0..=parts).map(|i| n * i / parts).collect();
    let mut decoded = Vec::new();
    for w in bounds.windows(2).rev() {
        let mut part = d.part(w[0]..w[1]);
        let mut pages = Vec::new();
        let mut buf = vec![0u8; d.header().page_size as usize];
        while let Some(pgno) = d.decode_next(&mut part, &mut buf)? {
            pages.push(Page {
                pgno,
                data: buf.clone(),
            });
        }
        decoded.push((part, pages));
    }
    decoded.reverse();
    let (parts, pages): (Vec<_>, Vec<_>) = decoded.into_iter().unzip();
    let (header, _) = d.finish(parts)?;
    Ok((header, pages.concat()))
}

/// Applies files in order, later pages winning, and cuts the image to the last commit.
fn apply(files: &[(Header, Vec<Page>)]) -> Vec<u8> {
    let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut commit = 0;
    let mut page_size = 0;
    for (h, ps) in files {
        commit = h.commit;
        page_size = h.page_size as usize;
        for p in ps {
            pages.insert(p.pgno, p.data.clone());
        }
    }
    let mut image = vec![0u8; commit as usize * page_size];
    for (pgno, data) in pages.range(1..=commit) {
        let at = (*pgno as usize - 1) * page_size;
        image[at..at + page_size].copy_from_slice(data);
    }
    image
}

#[test]
fn every_file_litestream_wrote_decodes_and_verifies() {
    let mut count = 0;
    for level in [0, 1, 2, 9] {
        for path in level_files(level) {
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            let (min, max) = ltx::parse_file_name(name).expect("name");
            let (h, _) = decode_file(&path);
            assert_eq!(
                (h.min_txid, h.max_txid),
                (min, max),
                "{name}: header agrees with the name"
            );
            assert_eq!(h.flags, ltx::FLAG_NO_CHECKSUM);
            count += 1;
        }
    }
    assert_eq!(count, 37, "every file of the fixture replica");
    // Field by field, one level-0 file as annotated in the research notes.
    let (h, pages) =
        decode_file(&fixtures().join("replica/ltx/0/0000000000000002-0000000000000002.ltx"));
    assert_eq!(
        (h.page_size, h.commit, h.min_txid, h.max_txid),
        (4096, 4, 2, 2)
    );
    assert_eq!(
        (h.timestamp_ms, h.wal_offset, h.wal_size),
        (1_795_325_863_311, 16_512, 4_120)
    );
    assert_eq!(pages.iter().map(|p| p.pgno).collect::<Vec<_>>(), [2]);
}

#[test]
fn snapshot_and_level0_chain_rebuild_what_litestream_restore_made() {
    let restored = std::fs::read(fixtures().join("restored-latest.db")).expect("restored db");
    let snapshot =
        decode_file(&fixtures().join("replica/ltx/9/0000000000000001-0000000000000010.ltx"));
    assert_eq!(
        apply(std::slice::from_ref(&snapshot)),
        restored,
        "the latest snapshot is the restored database"
    );
    let chain: Vec<_> = level_files(0).iter().map(|p| decode_file(p)).collect();
    assert!(chain[0].0.is_snapshot(), "level 0 starts with a snapshot");
    assert_eq!(
        apply(&chain),
        restored,
        "every level-0 file applied in order gives the same database"
    );
    // The database checksum (XOR of page checksums) matches the one computed in the research notes.
    let db = snapshot
        .1
        .iter()
        .fold(0u64, |acc, p| acc ^ page_checksum(p.pgno, &p.data))
        | ltx::CHECKSUM_FLAG;
    assert_eq!(db, 0xc956_9a26_107b_3f08);
}

#[test]
fn our_encoding_of_litestream_pages_decodes_to_the_same_pages() {
    let (h, pages) =
        decode_file(&fixtures().join("replica/ltx/9/0000000000000001-0000000000000010.ltx"));
    let mut enc = Encoder::new(
        Vec::new(),
        Header::new(h.page_size, h.commit, 1, h.max_txid, h.timestamp_ms),
    )
    .expect("header");
    for p in &pages {
        enc.encode_page(p.pgno, &p.data).expect("page");
    }
    let (bytes, trailer) = enc.finish(0).expect("finish");
    let (h2, pages2, t2) = Decoder::decode_all(&bytes[..]).expect("decode ours");
    assert_eq!((h2.commit, pages2, t2), (h.commit, pages, trailer));
}

fn sample_file(page_size: u32, pgnos: &[u32], commit: u32, min_txid: u64) -> Vec<u8> {
    let mut enc = Encoder::new(
        Vec::new(),
        Header::new(page_size, commit, min_txid, min_txid + 2, 1_700_000_000_000),
    )
    .expect("header");
    for &pgno in pgnos {
        let data: Vec<u8> = (0..page_size)
            .map(|i| ((i / 7) as u8).wrapping_mul(pgno as u8))
            .collect();
        enc.encode_page(pgno, &data).expect("page");
    }
    enc.finish(0).expect("finish").0
}

/// A flipped bit anywhere is refused, or (inside an LZ4 block, which may encode the same page in
/// several ways) decodes to exactly the same pages: damage never yields different "verified"
/// content. Every truncation is refused.
#[test]
fn any_flipped_bit_or_truncation_is_refused() {
    let file = sample_file(512, &[2, 5, 9], 10, 3);
    let (header, pages, _) = Decoder::decode_all(&file[..]).expect("intact");
    let mut refused = 0;
    for byte in 0..file.len() {
        for bit in [0, 3, 7] {
            let mut bad = file.clone();
            bad[byte] ^= 1 << bit;
            match Decoder::decode_all(&bad[..]) {
                Err(_) => refused += 1,
                Ok((h, p, _)) => assert!(
                    h == header && p == pages,
                    "flip of bit {bit} in byte {byte} gave different content that passed as verified"
                ),
            }
            for parts in [1, 2, 3] {
                assert_eq!(
                    decode_in_parts(&bad, parts).ok(),
                    Decoder::decode_all(&bad[..]).ok().map(|(h, p, _)| (h, p)),
                    "the slice decoder in {parts} parts agrees on a flip of bit {bit} in byte {byte}"
                );
            }
        }
    }
    assert!(
        refused > file.len() * 3 * 9 / 10,
        "nearly every flip is refused: {refused}"
    );
    for len in 0..file.len() {
        assert!(
            Decoder::decode_all(&file[..len]).is_err() && decode_in_parts(&file[..len], 2).is_err(),
            "truncation to {len} bytes went unnoticed"
        );
    }
    assert!(decode_in_parts(&[&file[..], &[0]].concat(), 2).is_err());
    let mut longer = file.clone();
    longer.push(0);
    assert!(matches!(
        Decoder::decode_all(&longer[..]),
        Err(Error::Trailer(_))
    ));
}

#[test]
fn the_encoder_refuses_what_the_format_forbids() {
    let header = Header::new(512, 10, 3, 4, 0);
    let page = vec![1u8; 512];
    let mut enc = Encoder::new(Vec::new(), header).expect("header");
    enc.encode_page(4, &page).expect("first page");
    assert!(enc.encode_page(4, &page).is_err(), "pages ascend");
    assert!(enc.encode_page(11, &page).is_err(), "no page past commit");
    assert!(
        enc.encode_page(5, &page[..100]).is_err(),
        "whole pages only"
    );
    let mut snap = Encoder::new(Vec::new(), Header::new(512, 3, 1, 1, 0)).expect("header");
    assert!(
        snap.encode_page(2, &page).is_err(),
        "a snapshot starts at page 1"
    );
    snap.encode_page(1, &page).expect("page 1");
    assert!(
        matches!(snap.finish(0), Err(Error::Usage(_))),
        "a snapshot holds every page"
    );
}

proptest::proptest! {
    #[test]
    fn round_trip(page_size_log in 9u32..=13, pages in proptest::collection::btree_map(1u32..200, proptest::collection::vec(0u8..4, 1..64), 0..20), snapshot in proptest::bool::ANY) {
        let page_size = 1u32 << page_size_log;
        let commit = 200;
        let content = |seed: &Vec<u8>| -> Vec<u8> { (0..page_size as usize).map(|i| seed[i % seed.len()].wrapping_add((i / 97) as u8)).collect() };
        let chosen: Vec<(u32, Vec<u8>)> = if snapshot {
            (1..=commit).map(|p| (p, content(&vec![p as u8]))).collect()
        } else {
            pages.iter().map(|(p, seed)| (*p, content(seed))).collect()
        };
        let header = Header::new(page_size, commit, if snapshot { 1 } else { 5 }, 9, 1_700_000_000_123);
        let mut enc = Encoder::new(Vec::new(), header).expect("header");
        for (p, data) in &chosen {
            enc.encode_page(*p, data).expect("page");
        }
        let (bytes, trailer) = enc.finish(0).expect("finish");
        let (h, decoded, t) = Decoder::decode_all(&bytes[..]).expect("decode");
        for parts in 1..=4 {
            let (h2, decoded2) = decode_in_parts(&bytes, parts).expect("decode in parts");
            proptest::prop_assert_eq!((h2, &decoded2), (h, &decoded));
        }
        proptest::prop_assert_eq!(h, header);
        proptest::prop_assert_eq!(t, trailer);
        let got: Vec<(u32, Vec<u8>)> = decoded.into_iter().map(|p| (p.pgno, p.data)).collect();
        proptest::prop_assert_eq!(got, chosen);
    }
}

#[test]
fn compacting_litestreams_level0_chain_gives_one_file_that_restores_the_same() {
    let restored = std::fs::read(fixtures().join("restored-latest.db")).expect("restored db");
    let raw: Vec<Vec<u8>> = level_files(0)
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let inputs: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
    let merged = ltx::compact(&inputs).expect("compact");
    let (h, pages, _) = Decoder::decode_all(&merged[..]).expect("merged file verifies");
    let latest = inputs
        .iter()
        .map(|b| Decoder::new(*b).expect("input").header().timestamp_ms)
        .max()
        .expect("inputs");
    let last = Decoder::new(*inputs.last().expect("last")).expect("last");
    assert_eq!(
        (h.min_txid, h.max_txid, h.timestamp_ms),
        (1, last.header().max_txid, latest),
        "covers the whole run and keeps the latest time: its commits are all before it"
    );
    assert_eq!(apply(&[(h, pages)]), restored);
    // A later half alone, too: it starts after a snapshot.
    let tail = ltx::compact(&inputs[3..]).expect("compact tail");
    let (th, _, _) = Decoder::decode_all(&tail[..]).expect("tail verifies");
    assert_eq!(
        th.min_txid,
        Decoder::new(inputs[3]).expect("h").header().min_txid
    );
    // Gaps, overlaps going backwards, and damaged inputs are refused.
    let gap = [inputs[0], inputs[2]];
    assert!(ltx::compact(&gap).is_err(), "a gap is refused");
    let backwards = [inputs[2], inputs[1]];
    assert!(ltx::compact(&backwards).is_err(), "out of order is refused");
    let mut damaged = raw[1].clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 1;
    assert!(
        ltx::compact(&[inputs[0], &damaged]).is_err(),
        "damage is refused"
    );
    assert!(ltx::compact(&[]).is_err());
}
