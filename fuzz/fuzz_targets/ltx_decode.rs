//! Fuzzes the LTX decoder: no input may panic it, and whatever it accepts as an intact file
//! must re-encode to a file that decodes to the same header and pages.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((header, pages, trailer)) = ltx::Decoder::decode_all(data) else { return };
    assert!(pages.iter().all(|p| p.data.len() == header.page_size as usize));
    let mut encoder = ltx::Encoder::new(Vec::new(), header).expect("an accepted header re-encodes");
    for page in &pages {
        encoder.encode_page(page.pgno, &page.data).expect("an accepted page re-encodes");
    }
    let (bytes, _) = encoder.finish(trailer.post_apply_checksum).expect("an accepted file re-encodes");
    let (header2, pages2, _) = ltx::Decoder::decode_all(&bytes[..]).expect("our own encoding decodes");
    assert_eq!((header2, pages2), (header, pages));
});
