//! The HPACK decoder against a real encoder (httlib-hpack): random header
//! lists, indexing choices, Huffman or not, dynamic table size updates and
//! evictions under small tables. Every block must decode to exactly the
//! fields encoded, with nothing unknown and the table exact throughout.
use httlib_hpack::Encoder;
use proptest::prelude::*;
use protocols::hpack::{BlockEnd, HeaderList, HpackConfig, HpackDecoder};

/// Names repeat (so the encoder finds them in its tables); some are in the
/// static table, some not.
const NAMES: [&str; 10] = [
    "content-type",
    "user-agent",
    "x-request-id",
    "grpc-timeout",
    "te",
    "accept-encoding",
    "x-custom-a",
    "x-custom-b",
    "cookie",
    "authorization",
];

#[derive(Debug, Clone)]
struct Field {
    name: Vec<u8>,
    value: Vec<u8>,
    flags: u8,
}

#[derive(Debug, Clone)]
struct Block {
    /// A dynamic table size update first (bounded by the decoder's
    /// SETTINGS_HEADER_TABLE_SIZE).
    resize: Option<u32>,
    fields: Vec<Field>,
}

fn field() -> impl Strategy<Value = Field> {
    let name = prop_oneof![
        (0..NAMES.len()).prop_map(|i| NAMES[i].as_bytes().to_vec()),
        ":method".prop_map(|_| b":method".to_vec()),
        "x-[a-z]{1,12}".prop_map(String::into_bytes),
    ];
    // Few distinct values so that whole fields repeat and get indexed.
    let value = prop_oneof![
        3 => "[a-c]{0,3}".prop_map(String::into_bytes),
        1 => "[ -~]{0,120}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|v| v.into_iter().filter(|b| *b != b'\r' && *b != b'\n' && *b != 0).collect()),
    ];
    // Huffman on name and/or value; with indexing, never indexed, or
    // neither; the best representation (indexed when the table has it).
    let flags = (0u8..4, 0u8..3, any::<bool>()).prop_map(|(h, ix, best)| {
        h | [0, Encoder::WITH_INDEXING, Encoder::NEVER_INDEXED][ix as usize]
            | if best { Encoder::BEST_FORMAT } else { 0 }
    });
    (name, value, flags).prop_map(|(name, value, flags)| {
        // :method must look like a method to be reported (validated).
        let value = if name == b":method" {
            [&b"GET"[..], b"POST", b"PUT", b"DELETE"][value.len() % 4].to_vec()
        } else {
            value
        };
        Field { name, value, flags }
    })
}

fn block(max_table: u32) -> impl Strategy<Value = Block> {
    let resize = prop_oneof![
        6 => Just(None),
        1 => (0..=max_table).prop_map(Some),
        1 => (0u32..=96).prop_map(Some),
    ];
    (resize, proptest::collection::vec(field(), 0..12))
        .prop_map(|(resize, fields)| Block { resize, fields })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn decodes_exactly_what_a_real_encoder_wrote(
        settings in prop_oneof![Just(4096u32), Just(256u32), Just(64u32), 0u32..16384],
        blocks in proptest::collection::vec(block(16384), 1..40),
    ) {
        let mut enc = Encoder::with_dynamic_size(settings.min(4096));
        let mut dec = HpackDecoder::new(HpackConfig::default());
        // The decoder's side announced `settings` in SETTINGS.
        dec.peer_table_size(settings);
        let mut out = HeaderList::default();
        let mut first = true;
        for b in blocks {
            let mut wire = Vec::new();
            // An encoder whose table differs from the default must say so
            // in its first block.
            let resize = if first && settings < 4096 { Some(settings) } else { b.resize };
            first = false;
            if let Some(size) = resize {
                let size = size.min(settings);
                enc.update_max_dynamic_size(size, &mut wire).unwrap();
            }
            for f in &b.fields {
                enc.encode((f.name.clone(), f.value.clone(), f.flags), &mut wire).unwrap();
            }
            out.clear();
            let d = dec.decode(&wire, BlockEnd::Complete, &mut out);
            prop_assert_eq!(d.cut, None, "block {:02x?}", wire);
            let got: Vec<(Vec<u8>, Vec<u8>)> = out
                .iter()
                .map(|f| {
                    assert!(f.why.is_none(), "unknown field {:?}", f.why);
                    (f.name.unwrap().to_vec(), f.value.unwrap().to_vec())
                })
                .collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> =
                b.fields.iter().map(|f| (f.name.clone(), f.value.clone())).collect();
            prop_assert_eq!(got, want);
            prop_assert!(dec.is_exact());
        }
        prop_assert_eq!(dec.counters().fields_unknown, 0);
    }
}
