//! RFC 7541 Appendix C vectors, and tables of loss-and-heal cases.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Fields as text: `name: value`, `?: value`, `name: ?` or `?: ?` with
/// the reason.
fn show(l: &HeaderList) -> Vec<String> {
    l.iter()
        .map(|f| {
            let t = |b: Option<&[u8]>| match b {
                Some(b) => String::from_utf8_lossy(b).into_owned(),
                None => format!("?{}", f.why.map_or("", |w| w.as_str())),
            };
            format!("{}: {}", t(f.name), t(f.value))
        })
        .collect()
}

fn decode(d: &mut HpackDecoder, block: &[u8]) -> (Vec<String>, Decoded) {
    let mut l = HeaderList::default();
    let r = d.decode(block, BlockEnd::Complete, &mut l);
    (show(&l), r)
}

fn check(d: &mut HpackDecoder, block: &str, want: &[&str], size: usize) {
    let (got, r) = decode(d, &hex(block));
    assert_eq!(got, want);
    assert_eq!(r.cut, None);
    assert_eq!(d.table.size_lb(), size);
    assert!(d.is_exact());
}

#[test]
fn c2_single_representations() {
    let mut d = HpackDecoder::new(HpackConfig::default());
    check(
        &mut d,
        "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        &["custom-key: custom-header"],
        55,
    );
    let mut d = HpackDecoder::new(HpackConfig::default());
    check(
        &mut d,
        "040c 2f73 616d 706c 652f 7061 7468",
        &[":path: /sample/path"],
        0,
    );
    check(
        &mut d,
        "1008 7061 7373 776f 7264 0673 6563 7265 74",
        &["password: secret"],
        0,
    );
    check(&mut d, "82", &[":method: GET"], 0);
}

const REQ1: [&str; 4] = [
    ":method: GET",
    ":scheme: http",
    ":path: /",
    ":authority: www.example.com",
];

fn requests(blocks: [&str; 3]) {
    let mut d = HpackDecoder::new(HpackConfig::default());
    check(&mut d, blocks[0], &REQ1, 57);
    let mut two = REQ1.to_vec();
    two.push("cache-control: no-cache");
    check(&mut d, blocks[1], &two, 110);
    check(
        &mut d,
        blocks[2],
        &[
            ":method: GET",
            ":scheme: https",
            ":path: /index.html",
            ":authority: www.example.com",
            "custom-key: custom-value",
        ],
        164,
    );
}

#[test]
fn c3_requests_without_huffman() {
    requests([
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ]);
}

#[test]
fn c4_requests_with_huffman() {
    requests([
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ]);
}

fn responses(blocks: [&str; 3]) {
    // The RFC's examples use a 256-byte table.
    let mut d = HpackDecoder::new(HpackConfig::default());
    d.table.set_max(256);
    let r1 = [
        ":status: 302",
        "cache-control: private",
        "date: Mon, 21 Oct 2013 20:13:21 GMT",
        "location: https://www.example.com",
    ];
    check(&mut d, blocks[0], &r1, 222);
    let mut r2 = r1;
    r2[0] = ":status: 307";
    check(&mut d, blocks[1], &r2, 222);
    check(
        &mut d,
        blocks[2],
        &[
            ":status: 200",
            "cache-control: private",
            "date: Mon, 21 Oct 2013 20:13:22 GMT",
            "location: https://www.example.com",
            "content-encoding: gzip",
            "set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ],
        215,
    );
    assert_eq!(d.entries(), 3);
}

#[test]
fn c5_responses_without_huffman() {
    responses([
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
         6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
         3d31",
    ]);
}

#[test]
fn c6_responses_with_huffman() {
    responses([
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
         9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ]);
}

/// A literal with incremental indexing of `name: value` (literal name).
fn insert(name: &str, value: &str) -> Vec<u8> {
    let mut v = vec![0x40];
    for s in [name, value] {
        // Length with a 7-bit prefix (RFC 7541 §5.1).
        let mut n = s.len();
        if n < 127 {
            v.push(n as u8);
        } else {
            v.push(127);
            n -= 127;
            while n >= 128 {
                v.push((n % 128) as u8 | 0x80);
                n /= 128;
            }
            v.push(n as u8);
        }
        v.extend_from_slice(s.as_bytes());
    }
    v
}

#[test]
fn loss_makes_old_entries_unknown_never_wrong() {
    let mut d = HpackDecoder::new(HpackConfig::default());
    decode(&mut d, &insert(":path", "/pkg.Svc/A"));
    assert_eq!(decode(&mut d, &[0xbe]).0, [":path: /pkg.Svc/A"]);
    d.lose(Unknown::Hole, true);
    assert!(!d.is_exact());
    // Static entries and literals still decode; the old entry does not.
    let (got, r) = decode(&mut d, &[0x83, 0xbe]);
    assert_eq!(got, [":method: POST", "?hole: ?hole"]);
    assert_eq!((r.fields, r.unknown, r.cut), (2, 1, None));
    // An entry inserted after the loss is index 62, and resolves.
    decode(&mut d, &insert(":path", "/pkg.Svc/B"));
    assert_eq!(
        decode(&mut d, &[0xbe, 0xbf]).0,
        [":path: /pkg.Svc/B", "?hole: ?hole"]
    );
    assert_eq!(d.counters().lost_hole, 1);
}

#[test]
fn size_update_to_zero_is_a_full_resync() {
    let mut d = HpackDecoder::new(HpackConfig::default());
    d.lose(Unknown::Attach, true);
    assert!(!d.is_exact());
    // Size update to 0, then to 4096, then an insertion.
    let mut b = vec![0x20, 0x3f, 0xe1, 0x1f];
    b.extend(insert("x-a", "1"));
    let (got, r) = decode(&mut d, &b);
    assert_eq!((got, r.cut), (vec!["x-a: 1".to_owned()], None));
    assert!(d.is_exact());
    assert_eq!(d.counters().resyncs, 1);
    // Index 63 cannot exist any more: a bad index, not a guess.
    let (got, r) = decode(&mut d, &[0xbf]);
    assert_eq!(got, ["?corrupt: ?corrupt"]);
    assert_eq!(r.cut, Some(Unknown::Corrupt));
    assert!(!d.is_exact());
}

#[test]
fn refilling_a_bounded_table_heals() {
    let mut d = HpackDecoder::new(HpackConfig::default());
    d.lose(Unknown::Truncated, true);
    // The peer's settings bound the table at 4096: once the entries
    // inserted since the loss leave no room for 32 more bytes, nothing
    // older can remain.
    let value = "v".repeat(200);
    let mut n = 0;
    while !d.is_exact() {
        decode(&mut d, &insert(&format!("x-{n:03}"), &value));
        n += 1;
        assert!(n < 30);
    }
    // 4096 / (5 + 200 + 32) = 17.3: the 18th insertion fills it.
    assert_eq!(n, 18);
    let (got, _) = decode(&mut d, &[0xbe]);
    assert_eq!(got, [format!("x-017: {value}")]);
}

#[test]
fn unknown_bound_needs_a_size_update_to_heal() {
    let mut d = HpackDecoder::new(HpackConfig::default());
    d.peer_table_size_unknown();
    d.lose(Unknown::Attach, true);
    for n in 0..40 {
        decode(&mut d, &insert(&format!("x-{n:03}"), &"v".repeat(200)));
    }
    assert!(!d.is_exact());
    // A size update to 1024 makes the maximum exact: the entries held
    // already fill it.
    let (_, r) = decode(&mut d, &[0x3f, 0xe1, 0x07]);
    assert_eq!(r.cut, None);
    assert!(d.is_exact());
    assert_eq!(d.entries(), 4);
}

#[test]
fn truncated_block_keeps_its_beginning() {
    let mut d = HpackDecoder::new(HpackConfig::default());
    let mut b = vec![0x83, 0x86];
    b.extend(insert(":path", "/a/b"));
    b.extend(insert("x-long", "0123456789"));
    let cut = b.len() - 4;
    let mut l = HeaderList::default();
    let r = d.decode(&b[..cut], BlockEnd::Lost(Unknown::Truncated), &mut l);
    assert_eq!(show(&l), [":method: POST", ":scheme: http", ":path: /a/b"]);
    assert_eq!(r.cut, Some(Unknown::Truncated));
    // ":path /a/b" was inserted before the cut, but the lost rest may have
    // inserted more: it is unknown now.
    assert_eq!(decode(&mut d, &[0xbe]).0, ["?truncated: ?truncated"]);
}

#[test]
fn unknown_name_entry_keeps_its_value_only() {
    let mut d = HpackDecoder::new(HpackConfig::default());
    d.lose(Unknown::SyncLost, true);
    // Literal with indexing, name = index 62 (unknown), value "v1".
    let (got, _) = decode(&mut d, &[0x7e, 0x02, b'v', b'1']);
    assert_eq!(got, ["?sync_lost: v1"]);
    assert_eq!(decode(&mut d, &[0xbe]).0, ["?sync_lost: v1"]);
    assert_eq!(
        HeaderList::default().lookup(b":path"),
        None,
        "absent when nothing is unknown"
    );
}

#[test]
fn invalid_pseudo_values_are_unknown() {
    let mut d = HpackDecoder::new(HpackConfig::default());
    let mut b = Vec::new();
    for (n, v) in [
        (":path", "no-slash"),
        (":method", "GE T"),
        (":status", "2000"),
        (":path", "/ok"),
        (":method", "PURGE"),
        (":status", "204"),
    ] {
        b.extend([0x00, n.len() as u8]);
        b.extend(n.as_bytes());
        b.push(v.len() as u8);
        b.extend(v.as_bytes());
    }
    let (got, _) = decode(&mut d, &b);
    assert_eq!(
        got,
        [
            ":path: ?invalid",
            ":method: ?invalid",
            ":status: ?invalid",
            ":path: /ok",
            ":method: PURGE",
            ":status: 204"
        ]
    );
    assert_eq!(d.counters().fields_invalid, 3);
}

#[test]
fn memory_bound_drops_become_unknown() {
    let mut d = HpackDecoder::new(HpackConfig {
        max_table_bytes: 64,
        ..HpackConfig::default()
    });
    decode(&mut d, &insert("x-a", &"a".repeat(20)));
    decode(&mut d, &insert("x-b", &"b".repeat(20)));
    decode(&mut d, &insert("x-c", &"c".repeat(20)));
    let (got, _) = decode(&mut d, &[0xbe, 0xbf, 0xc0]);
    assert_eq!(
        got,
        [
            format!("x-c: {}", "c".repeat(20)),
            format!("x-b: {}", "b".repeat(20)),
            "?evicted: ?evicted".to_owned()
        ]
    );
}

#[test]
fn malformed_blocks_never_panic_and_are_cut() {
    let mut d = HpackDecoder::new(HpackConfig::default());
    for b in [
        &[0x80][..],                           // index 0
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // huge index
        &[0x40, 0x85, 0xff, 0xff],             // string runs past the end
        &[0x82, 0x20],                         // size update after a field
        &[0x00, 0x81, 0x00, 0x00],             // bad Huffman
    ] {
        let (_, r) = decode(&mut d, b);
        assert_eq!(r.cut, Some(Unknown::Corrupt), "{b:02x?}");
    }
}

#[test]
fn output_bound_drops_fields_but_keeps_inserting() {
    let mut d = HpackDecoder::new(HpackConfig {
        max_fields: 2,
        ..HpackConfig::default()
    });
    let mut b = vec![0x82, 0x84];
    b.extend(insert("x-late", "1"));
    let (got, r) = decode(&mut d, &b);
    assert_eq!(got.len(), 2);
    assert_eq!(r.dropped, 1);
    assert_eq!(decode(&mut d, &[0xbe]).0, ["x-late: 1"]);
}

/// A literal field without indexing, new name.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

#[test]
fn dropped_fields_leave_no_bytes_behind() {
    let mut d = HpackDecoder::new(HpackConfig {
        max_decoded_bytes: 64,
        max_fields: 3,
        ..HpackConfig::default()
    });
    // Past the byte bound: 40 bytes each, the second one crosses it.
    let mut b = Vec::new();
    for i in 0..20 {
        b.extend(literal(&format!("x-{i:02}"), &"v".repeat(36)));
    }
    b.extend(insert("x-late", "1"));
    let mut l = HeaderList::default();
    let r = d.decode(&b, BlockEnd::Complete, &mut l);
    assert_eq!((r.fields, r.dropped, r.cut), (1, 20, None));
    assert_eq!(l.byte_len(), 40);
    assert_eq!(decode(&mut d, &[0xbe]).0, ["x-late: 1"]);
    // Past the field bound: only the kept fields' bytes.
    let mut b = vec![0x82, 0x84, 0x86];
    b.extend(literal("x-big", &"w".repeat(50)));
    b.extend([0xbe]);
    let mut l = HeaderList::default();
    let r = d.decode(&b, BlockEnd::Complete, &mut l);
    assert_eq!((r.fields, r.dropped), (3, 2));
    assert_eq!(l.byte_len(), ":methodGET:path/:schemehttp".len());
}
