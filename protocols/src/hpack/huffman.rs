//! HPACK Huffman decoding (RFC 7541 §5.2, Appendix B).
//!
//! The code table comes from `httlib-huffman` (the RFC's Appendix B as a
//! constant); its decoder is not used: it allocates on every string and
//! accepts padding that is not a prefix of EOS. Here the canonical code is
//! turned once into a state machine over nibbles (the usual HPACK
//! technique): 256 states (the internal nodes of the code tree) × 16
//! nibbles, each step emitting at most one symbol (the shortest code has 5
//! bits). Decoding is two table look-ups per input byte, no allocation
//! beyond the output.

use std::sync::OnceLock;

use httlib_huffman::encoder::table::ENCODE_TABLE;

/// EOS symbol number.
const EOS: usize = 256;

/// One transition: where to go after four bits and what they completed.
#[derive(Debug, Clone, Copy, Default)]
struct Step {
    /// Next state (internal node).
    next: u8,
    /// Symbol completed on the way (valid when `EMIT` is set).
    sym: u8,
    flags: u8,
}

/// A symbol was completed.
const EMIT: u8 = 1;
/// The bits reached EOS or left the code: invalid input.
const FAIL: u8 = 2;
/// The state after the step may end a string: at most 7 bits deep, all
/// ones (a prefix of EOS, RFC 7541 §5.2).
const ACCEPT: u8 = 4;

struct Machine {
    steps: Vec<Step>,
}

/// Builds the code tree, then the nibble transitions.
fn build() -> Machine {
    // Tree nodes: children[i] = [left, right]; a child >= 0x10000 is a
    // leaf (symbol + 0x10000), 0 is "none" (the root is never a child).
    let mut children: Vec<[u32; 2]> = vec![[0, 0]];
    for (sym, &(len, code)) in ENCODE_TABLE.iter().enumerate() {
        let mut node = 0usize;
        for bit in (0..len).rev() {
            let b = ((code >> bit) & 1) as usize;
            if bit == 0 {
                children[node][b] = 0x10000 + sym as u32;
            } else {
                if children[node][b] == 0 {
                    children.push([0, 0]);
                    children[node][b] = (children.len() - 1) as u32;
                }
                node = children[node][b] as usize;
            }
        }
    }
    // Depth and all-ones flag of each internal node, for ACCEPT.
    let mut accept = vec![false; children.len()];
    accept[0] = true;
    let mut node = 0usize;
    for _ in 0..7 {
        match children.get(node).map(|c| c[1]) {
            Some(c) if c != 0 && c < 0x10000 => {
                node = c as usize;
                accept[node] = true;
            }
            _ => break,
        }
    }
    let mut steps = vec![Step::default(); children.len() * 16];
    for state in 0..children.len() {
        for nib in 0..16u32 {
            let mut node = state;
            let mut step = Step::default();
            for k in (0..4).rev() {
                let b = ((nib >> k) & 1) as usize;
                let c = children[node][b];
                if c >= 0x10000 {
                    let sym = (c - 0x10000) as usize;
                    if sym == EOS {
                        step.flags |= FAIL;
                        break;
                    }
                    step.sym = sym as u8;
                    step.flags |= EMIT;
                    node = 0;
                } else if c == 0 {
                    step.flags |= FAIL;
                    break;
                } else {
                    node = c as usize;
                }
            }
            step.next = node as u8;
            if accept[node] {
                step.flags |= ACCEPT;
            }
            steps[state * 16 + nib as usize] = step;
        }
    }
    Machine { steps }
}

fn machine() -> &'static Machine {
    static M: OnceLock<Machine> = OnceLock::new();
    M.get_or_init(build)
}

/// Invalid Huffman input (EOS in the string, or padding that is longer
/// than 7 bits or not all ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HuffmanError;

/// Decodes `src`, appending to `dst`. On error `dst` may hold part of the
/// string: callers truncate it.
pub fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let steps = &machine().steps;
    dst.reserve(src.len() * 8 / 5 + 1);
    let mut state = 0usize;
    let mut accept = true;
    for &byte in src {
        for nib in [byte >> 4, byte & 0xf] {
            let s = steps
                .get(state * 16 + usize::from(nib))
                .copied()
                .unwrap_or(Step {
                    next: 0,
                    sym: 0,
                    flags: FAIL,
                });
            if s.flags & FAIL != 0 {
                return Err(HuffmanError);
            }
            if s.flags & EMIT != 0 {
                dst.push(s.sym);
            }
            state = usize::from(s.next);
            accept = s.flags & ACCEPT != 0;
        }
    }
    if accept {
        Ok(())
    } else {
        Err(HuffmanError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(b: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut v = Vec::new();
        decode(b, &mut v).map(|()| v)
    }

    #[test]
    fn rfc_examples() {
        // RFC 7541 C.4.1 and C.6.1.
        assert_eq!(
            dec(&[0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff]).unwrap(),
            b"www.example.com"
        );
        assert_eq!(dec(&[0x64, 0x02]).unwrap(), b"302");
        assert_eq!(dec(&[]).unwrap(), b"");
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut enc = Vec::new();
        httlib_huffman::encode(&all, &mut enc).unwrap();
        assert_eq!(dec(&enc).unwrap(), all);
        for b in 0..=255u8 {
            let mut enc = Vec::new();
            httlib_huffman::encode(&[b, b'a', b], &mut enc).unwrap();
            assert_eq!(dec(&enc).unwrap(), vec![b, b'a', b]);
        }
    }

    #[test]
    fn bad_padding_and_eos() {
        // "a" is 00011 (5 bits): padding 000 is not a prefix of EOS.
        assert_eq!(dec(&[0b0001_1000]), Err(HuffmanError));
        assert_eq!(dec(&[0b0001_1111]).unwrap(), b"a");
        // A whole byte of padding (8 ones) is too long.
        assert_eq!(dec(&[0b0001_1111, 0xff]), Err(HuffmanError));
        // EOS itself (30 ones) inside a string.
        assert_eq!(dec(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError));
    }
}
