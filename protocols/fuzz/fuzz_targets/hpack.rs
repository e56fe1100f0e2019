//! Fuzzes the HPACK decoder: blocks cut at random, losses injected,
//! bounded table; no panic, bounded output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::hpack::{BlockEnd, HeaderList, HpackConfig, HpackDecoder, Unknown};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let cfg = HpackConfig {
        max_table_bytes: 64 + usize::from(ctl) * 32,
        max_decoded_bytes: 4096,
        max_fields: 64,
    };
    let mut d = HpackDecoder::new(cfg);
    let mut out = HeaderList::default();
    // Blocks: a length byte (high bit: the block is cut by a loss; next
    // bit: a loss between blocks), then the block.
    let mut i = 0;
    while i < rest.len() {
        let c = rest[i];
        i += 1;
        let end = (i + usize::from(c & 0x3f) * 4).min(rest.len());
        if c & 0x40 != 0 {
            d.lose(Unknown::Hole, true);
        }
        let how = if c & 0x80 != 0 { BlockEnd::Lost(Unknown::Truncated) } else { BlockEnd::Complete };
        out.clear();
        let r = d.decode(&rest[i..end], how, &mut out);
        assert_eq!(r.fields as usize, out.len());
        assert!(out.len() <= 64);
        // Dropped fields leave no bytes behind: the bound bounds memory.
        assert!(out.byte_len() <= 4096);
        for f in out.iter() {
            assert_eq!(f.why.is_some(), !f.is_known());
        }
        i = end;
    }
});
