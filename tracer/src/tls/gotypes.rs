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
//! them to the loader (`R_X86_64_RELATIVE`: the link-time address is the
//! relocation's addend), and they are read from its relocations.
//!
//! Itabs (an interface's method table for one concrete type) are found
//! here too: by the functions they list, in `.itablink`.
use std::collections::HashMap;

use object::{elf, Object, ObjectSection, RelocationFlags, SectionKind};

use super::gofunctab::FuncTab;

/// Where the linker points the itab slots of methods it dropped.
const UNREACHABLE_METHOD: &str = "runtime.unreachableMethod";

const TYPE_SIZE: u64 = 48;
const KIND_AT: u64 = 23;
const KIND_MASK: u8 = 0x1f;
const KIND_INTERFACE: u8 = 20;
const KIND_PTR: u8 = 22;
const KIND_STRUCT: u8 = 25;
/// A field's bytes: name, type, offset.
const FIELD_SIZE: u64 = 24;
/// More fields than any struct read here has (a bound on a bad read).
const MAX_FIELDS: u64 = 512;
/// More methods than any interface read here has.
const MAX_METHODS: u64 = 256;

/// `len` bytes at link-time address `addr`, from the section holding them.
pub(super) fn read_vaddr<'d>(obj: &object::File<'d>, addr: u64, len: u64) -> Option<&'d [u8]> {
    let end = addr.checked_add(len)?;
    obj.sections()
        .filter(|s| s.kind() != SectionKind::UninitializedData)
        .find(|s| addr >= s.address() && end <= s.address() + s.size())
        .and_then(|s| s.data_range(addr, len).ok().flatten())
}

/// A section of a Go program by its name, with its link-time address; a
/// position-independent one puts the sections the loader relocates under
/// `.data.rel.ro`.
pub(super) fn go_section<'d>(obj: &object::File<'d>, name: &str) -> Option<(u64, &'d [u8])> {
    let s = obj
        .section_by_name(name)
        .or_else(|| obj.section_by_name(&format!(".data.rel.ro{name}")))?;
    Some((s.address(), s.data().ok()?))
}

/// The type descriptors and itabs of one program.
pub struct Types<'a, 'd> {
    obj: &'a object::File<'d>,
    /// Offsets carry the "embedded" bit (Go before 1.19).
    embed_bit: bool,
    /// Pointers the loader fills in: where -> link-time address.
    relocated: HashMap<u64, u64>,
}

impl<'a, 'd> Types<'a, 'd> {
    pub fn new(obj: &'a object::File<'d>, go_minor: u32) -> Self {
        let relative = |r: &object::Relocation| matches!(r.flags(), RelocationFlags::Elf { r_type } if r_type == elf::R_X86_64_RELATIVE);
        let relocated = obj
            .dynamic_relocations()
            .into_iter()
            .flatten()
            .filter(|(_, r)| relative(r))
            .filter_map(|(at, r)| Some((at, u64::try_from(r.addend()).ok()?)))
            .collect();
        Types {
            obj,
            embed_bit: go_minor < 19,
            relocated,
        }
    }

    fn bytes(&self, addr: u64, len: u64) -> Option<&'d [u8]> {
        (addr != 0)
            .then(|| read_vaddr(self.obj, addr, len))
            .flatten()
    }

    /// The pointer or integer at `addr`, as the loader leaves it.
    fn word(&self, addr: u64) -> Option<u64> {
        if let Some(&v) = self.relocated.get(&addr) {
            return Some(v);
        }
        Some(u64::from_le_bytes(self.bytes(addr, 8)?.try_into().ok()?))
    }

    /// The concrete type of the itab at `itab` (its second word; 0 when
    /// unknown).
    pub fn itab_type(&self, itab: u64) -> u64 {
        self.word(itab + 8).unwrap_or(0)
    }

    /// The itab whose method table is that of the functions `methods`
    /// (see [`Types::itab_by_methods`]), their addresses from `tab`.
    pub fn itab_of(&self, tab: &FuncTab<'_>, methods: &[&str]) -> Option<u64> {
        let mut names = methods.to_vec();
        names.push(UNREACHABLE_METHOD);
        let found = tab.find(&names);
        let (stub, methods) = found.split_last()?;
        let addrs: Vec<Option<u64>> = methods.iter().map(|f| f.map(|(a, _)| a)).collect();
        self.itab_by_methods(&addrs, stub.map(|(a, _)| a))
    }

    /// The itab listed in `.itablink` whose method table is `methods` (the
    /// concrete type's, in the order of the interface's method names) and
    /// whose interface has exactly that many methods (a larger interface
    /// that starts with the same names has more). The linker drops methods
    /// the program never calls and points their slots at `stub`
    /// (`runtime.unreachableMethod`); at least one method must be there.
    pub fn itab_by_methods(&self, methods: &[Option<u64>], stub: Option<u64>) -> Option<u64> {
        let methods: Vec<u64> = methods.iter().map(|m| m.or(stub)).collect::<Option<_>>()?;
        if stub.is_some_and(|s| methods.iter().all(|&m| m == s)) {
            return None;
        }
        // itab: interface type, concrete type, hash and padding, then the
        // methods; interfacetype: a type, the package path, then the
        // methods' slice (pointer, length, capacity).
        self.itabs().find(|&itab| {
            let same = methods
                .iter()
                .enumerate()
                .all(|(m, &a)| self.word(itab + 8 * (3 + m as u64)) == Some(a));
            same && self
                .word(itab)
                .and_then(|inter| self.word(inter + TYPE_SIZE + 16))
                == Some(methods.len() as u64)
        })
    }

    /// The itabs listed in `.itablink`.
    fn itabs(&self) -> impl Iterator<Item = u64> + '_ {
        let (start, n) = go_section(self.obj, ".itablink")
            .map_or((0, 0), |(start, links)| (start, links.len() as u64 / 8));
        (0..n).filter_map(move |i| self.word(start + i * 8))
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

    /// The fields of struct type `typ`: (name, offset, type), until one
    /// cannot be read.
    fn fields(&self, typ: u64) -> impl Iterator<Item = (&'d [u8], u64, u64)> + '_ {
        let (fields, n) = match self.kind(typ) {
            Some(KIND_STRUCT) => (
                self.word(typ + TYPE_SIZE + 8).unwrap_or(0),
                self.word(typ + TYPE_SIZE + 16).unwrap_or(0),
            ),
            _ => (0, 0),
        };
        (0..n.min(MAX_FIELDS)).map_while(move |i| {
            let at = fields + i * FIELD_SIZE;
            let offset = self.word(at + 16)?;
            let offset = if self.embed_bit { offset >> 1 } else { offset };
            Some((self.name(self.word(at)?)?, offset, self.word(at + 8)?))
        })
    }

    /// (offset, type) of the field `name` of struct type `typ`.
    pub fn field(&self, typ: u64, name: &str) -> Option<(u64, u64)> {
        self.fields(typ)
            .find(|(n, _, _)| *n == name.as_bytes())
            .map(|(_, offset, t)| (offset, t))
    }

    /// The methods of interface type `typ`, 8 bytes each: its name and
    /// type offsets. The linker writes each name and signature once, so the
    /// same method of two interfaces has the same bytes.
    fn imethods(&self, typ: u64) -> Option<&'d [u8]> {
        if self.kind(typ)? != KIND_INTERFACE {
            return None;
        }
        let at = self.word(typ + TYPE_SIZE + 8)?;
        let n = self.word(typ + TYPE_SIZE + 16)?.min(MAX_METHODS);
        self.bytes(at, n * 8)
    }

    /// Connection types that wrap another connection in a field other
    /// than their first (`net.Conn`-like: an interface type with every
    /// method of the interface of itab `conn`): (type, offset of that field), for
    /// each type a program uses as such an interface (its itabs). Those
    /// holding it first need no entry: the first field is followed anyway.
    pub fn conn_wrappers(&self, conn: u64) -> Vec<(u64, u64)> {
        let Some(want) = self.word(conn).and_then(|i| self.imethods(i)) else {
            return Vec::new();
        };
        let is_conn = |t: u64| {
            self.imethods(t).is_some_and(|m| {
                want.chunks_exact(8)
                    .all(|w| m.chunks_exact(8).any(|x| x == w))
            })
        };
        let mut found: Vec<(u64, u64)> = Vec::new();
        for itab in self.itabs() {
            let (Some(inter), Some(typ)) = (self.word(itab), self.word(itab + 8)) else {
                continue;
            };
            if found.iter().any(|&(t, _)| t == typ) || !is_conn(inter) {
                continue;
            }
            let st = self.elem(typ).unwrap_or(typ);
            let field = self
                .fields(st)
                .find(|&(_, _, t)| is_conn(t))
                .map(|(_, offset, _)| offset);
            if let Some(offset) = field.filter(|&o| o != 0) {
                found.push((typ, offset));
            }
        }
        found
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
