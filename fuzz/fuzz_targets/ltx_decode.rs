//! Fuzzes the LTX decoders: no input may panic them, the range decoder (in one part or two, from
//! memory or read at offsets a few frames at a time) accepts exactly what the streaming decoder
//! accepts with the same pages, and whatever they accept as an intact file must re-encode to a
//! file that decodes to the same header and pages.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Bytes read only at offsets, as from a file.
struct AtOffsets<'a>(&'a [u8]);

impl ltx::ReadAt for AtOffsets<'_> {
    fn size(&self) -> std::io::Result<u64> {
        self.0.size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}

fn decode_in_parts<S: ltx::ReadAt + ?Sized>(
    d: ltx::Result<ltx::RangeDecoder<'_, S>>,
    parts: usize,
) -> ltx::Result<(ltx::Header, Vec<ltx::Page>)> {
    let d = d?;
    let n = d.page_count();
    let mut done = Vec::new();
    let mut pages = Vec::new();
    let mut buf = vec![0u8; d.header().page_size as usize];
    for i in 0..parts {
        let mut part = d.part(n * i / parts..n * (i + 1) / parts);
        while let Some(pgno) = d.decode_next(&mut part, &mut buf)? {
            pages.push(ltx::Page { pgno, data: buf.clone() });
        }
        done.push(part);
    }
    let (header, _) = d.finish(done)?;
    Ok((header, pages))
}

fuzz_target!(|data: &[u8]| {
    let streamed = ltx::Decoder::decode_all(data);
    let want = streamed.as_ref().ok().map(|(h, p, _)| (*h, p.clone()));
    let at_offsets = AtOffsets(data);
    for parts in [1, 2] {
        assert_eq!(
            decode_in_parts(ltx::SliceDecoder::new(data), parts).ok(),
            want,
            "the slice decoder in {parts} parts disagrees with the streaming decoder"
        );
        let windowed = ltx::RangeDecoder::new(&at_offsets).map(|d| d.with_window(300));
        assert_eq!(
            decode_in_parts(windowed, parts).ok(),
            want,
            "the decoder reading at offsets in {parts} parts disagrees with the streaming decoder"
        );
    }
    let Ok((header, pages, trailer)) = streamed else { return };
    assert!(pages.iter().all(|p| p.data.len() == header.page_size as usize));
    let mut encoder = ltx::Encoder::new(Vec::new(), header).expect("an accepted header re-encodes");
    for page in &pages {
        encoder.encode_page(page.pgno, &page.data).expect("an accepted page re-encodes");
    }
    let (bytes, _) = encoder.finish(trailer.post_apply_checksum).expect("an accepted file re-encodes");
    let (header2, pages2, _) = ltx::Decoder::decode_all(&bytes[..]).expect("our own encoding decodes");
    assert_eq!((header2, pages2), (header, pages));
});
