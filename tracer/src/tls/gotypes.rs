//! Struct layouts from a Go program's runtime type descriptors, for
//! programs without DWARF (`-ldflags=-w`, how most Go releases ship).
//! Reflection needs the name, type and offset of every field of the types a
//! program converts to interfaces, so the executable keeps them whatever
//! else it was stripped of, in the layout of `internal/abi` (amd64):
//! - a type: size, pointer bytes (8 each), hash (4), tflag, align, field
//!   align, kind (1 each), equality function, GC data (8 each), name and
//!   pointer-to-this offsets (4 each): 48 bytes;
//! - a pointer type: a type, then its element type;
//! - a struct type: a type, its package path, then its fields' slice;
//! - a field: its name, its type, its offset (shifted left by one, the low
//!   bit saying "embedded", before Go 1.19);
//! - a name: a flag byte, its length as a varint (Go 1.17+), its bytes.
//!
//! Pointers are link-time addresses; a position-independent program leaves
//! them to the loader, and then nothing is read (the caller falls back).
use object::{Object, ObjectSection, SectionKind};

const TYPE_SIZE: u64 = 48;
const KIND_AT: u64 = 23;
const KIND_MASK: u8 = 0x1f;
const KIND_PTR: u8 = 22;
const KIND_STRUCT: u8 = 25;
/// A field's bytes: name, type, offset.
const FIELD_SIZE: u64 = 24;
/// More fields than any struct read here has (a bound on a bad read).
const MAX_FIELDS: u64 = 512;

/// `len` bytes at link-time address `addr`, from the section holding them.
pub(super) fn read_vaddr<'d>(obj: &object::File<'d>, addr: u64, len: u64) -> Option<&'d [u8]> {
    let end = addr.checked_add(len)?;
    obj.sections()
        .filter(|s| s.kind() != SectionKind::UninitializedData)
        .find(|s| addr >= s.address() && end <= s.address() + s.size())
        .and_then(|s| s.data_range(addr, len).ok().flatten())
}

/// The type descriptors of one program.
pub struct Types<'a, 'd> {
    obj: &'a object::File<'d>,
    /// Offsets carry the "embedded" bit (Go before 1.19).
    embed_bit: bool,
}

impl<'a, 'd> Types<'a, 'd> {
    pub fn new(obj: &'a object::File<'d>, go_minor: u32) -> Self {
        Types {
            obj,
            embed_bit: go_minor < 19,
        }
    }

    fn bytes(&self, addr: u64, len: u64) -> Option<&'d [u8]> {
        (addr != 0)
            .then(|| read_vaddr(self.obj, addr, len))
            .flatten()
    }

    fn word(&self, addr: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(addr, 8)?.try_into().ok()?))
    }

    fn kind(&self, typ: u64) -> Option<u8> {
        Some(self.bytes(typ + KIND_AT, 1)?[0] & KIND_MASK)
    }

    /// The element type of pointer type `typ`.
    pub fn elem(&self, typ: u64) -> Option<u64> {
        (self.kind(typ)? == KIND_PTR)
            .then(|| self.word(typ + TYPE_SIZE))
            .flatten()
    }

    /// A name's text.
    fn name(&self, at: u64) -> Option<&'d [u8]> {
        // Flag byte, then at most a two-byte varint for any name here.
        let head = self.bytes(at, 3)?;
        let (len, used) = match (head[1], head[2]) {
            (b, _) if b < 0x80 => (u64::from(b), 1),
            (b, c) if c < 0x80 => (u64::from(b & 0x7f) | u64::from(c) << 7, 2),
            _ => return None,
        };
        self.bytes(at + 1 + used, len)
    }

    /// (offset, type) of the field `name` of struct type `typ`.
    pub fn field(&self, typ: u64, name: &str) -> Option<(u64, u64)> {
        if self.kind(typ)? != KIND_STRUCT {
            return None;
        }
        let fields = self.word(typ + TYPE_SIZE + 8)?;
        let n = self.word(typ + TYPE_SIZE + 16)?;
        for i in 0..n.min(MAX_FIELDS) {
            let at = fields + i * FIELD_SIZE;
            if self.name(self.word(at)?)? != name.as_bytes() {
                continue;
            }
            let offset = self.word(at + 16)?;
            let offset = if self.embed_bit { offset >> 1 } else { offset };
            return Some((offset, self.word(at + 8)?));
        }
        None
    }

    /// The offset of a path of fields from struct type `typ`, each field
    /// a struct held inline, the last one any type.
    pub fn offset(&self, typ: u64, path: &[&str]) -> Option<u64> {
        let (mut off, mut t) = (0u64, typ);
        for name in path {
            let (o, next) = self.field(t, name)?;
            off = off.checked_add(o)?;
            t = next;
        }
        Some(off)
    }
}
