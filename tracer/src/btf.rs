//! Struct member offsets from the running kernel's BTF.
//!
//! aya-ebpf has no CO-RE relocations, so the programs read kernel structs at
//! offsets the agent looks up here at start-up and sets as globals. Only what
//! that needs is parsed: struct/union members, through anonymous members and
//! type modifiers.
use std::collections::HashMap;

use thiserror::Error;

/// Why an offset could not be found.
#[derive(Clone, Debug, Error)]
pub enum BtfError {
    /// The blob is not BTF or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// The struct does not exist in this kernel.
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    /// The member path does not exist.
    #[error("member {member} not found in struct {ty}")]
    NoMember {
        /// The struct searched.
        ty: String,
        /// The member that was missing.
        member: String,
    },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

struct Type {
    kind: u32,
    name: u32,
    /// Referenced type for modifiers and typedefs.
    ty: u32,
    members: Vec<Member>,
}

/// The kernel's types, enough to resolve member offsets.
pub struct Btf {
    types: Vec<Type>, // index = type id; 0 is void
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Parses a raw BTF blob (e.g. /sys/kernel/btf/vmlinux).
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 || b[0] != 0x9f || b[1] != 0xeb {
            return Err(BtfError::Malformed(
                "bad magic (big-endian BTF is not supported)",
            ));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_start = hdr_len + type_off;
        let tb = b
            .get(types_start..types_start + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = vec![Type {
            kind: 0,
            name: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let mut p = 0;
        while p < tb.len() {
            let name = u32_at(tb, p)?;
            let info = u32_at(tb, p + 4)?;
            let size_or_type = u32_at(tb, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => p += 4,
                KIND_ARRAY => p += 12,
                KIND_STRUCT | KIND_UNION => {
                    members.reserve(vlen);
                    for _ in 0..vlen {
                        let off = u32_at(tb, p + 8)?;
                        members.push(Member {
                            name: u32_at(tb, p)?,
                            ty: u32_at(tb, p + 4)?,
                            bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
                        });
                        p += 12;
                    }
                }
                // Parameter names are kept: the call sources check the
                // prototypes of the functions they trace.
                KIND_FUNC_PROTO => {
                    members.reserve(vlen);
                    for _ in 0..vlen {
                        members.push(Member {
                            name: u32_at(tb, p)?,
                            ty: u32_at(tb, p + 4)?,
                            bit_offset: 0,
                        });
                        p += 8;
                    }
                }
                KIND_ENUM => p += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => p += 12 * vlen,
                _ => {}
            }
            types.push(Type {
                kind,
                name,
                ty: size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                let name = btf.string(t.name).to_owned();
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    /// Reads and parses the running kernel's BTF.
    pub fn from_sys() -> std::io::Result<Result<Btf, BtfError>> {
        Ok(Btf::parse(&std::fs::read("/sys/kernel/btf/vmlinux")?))
    }

    fn string(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.ty
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `name` in the struct/union `t`, looking through anonymous
    /// members; returns the member's type id too.
    fn find_member(&self, t: &Type, name: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            if m.name != 0 {
                if self.string(m.name) == name {
                    return Some((m.bit_offset, m.ty));
                }
            } else if let Some(inner) = self.resolve(m.ty) {
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                    if let Some((off, ty)) = self.find_member(inner, name, depth + 1) {
                        return Some((m.bit_offset + off, ty));
                    }
                }
            }
        }
        None
    }

    /// Whether a typedef `name` exists (e.g. `btf_trace_sock_send_length`,
    /// which the kernel declares for every tracepoint a tp_btf program can
    /// attach to).
    pub fn has_typedef(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.kind == KIND_TYPEDEF && t.name != 0 && self.string(t.name) == name)
    }

    /// The parameter names of kernel function `name`, or None when BTF has
    /// no such function.
    pub fn func_params(&self, name: &str) -> Option<Vec<&str>> {
        let f = self
            .types
            .iter()
            .find(|t| t.kind == KIND_FUNC && t.name != 0 && self.string(t.name) == name)?;
        let proto = self.types.get(f.ty as usize)?;
        (proto.kind == KIND_FUNC_PROTO)
            .then(|| proto.members.iter().map(|m| self.string(m.name)).collect())
    }

    /// Byte offset of `path` (e.g. `["__sk_common", "skc_daddr"]`) in
    /// `struct name`.
    pub fn offset_of(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        let mut t = &self.types[id as usize];
        let mut bits = 0;
        for (i, member) in path.iter().enumerate() {
            let (off, ty) = self
                .find_member(t, member, 0)
                .ok_or_else(|| BtfError::NoMember {
                    ty: name.to_owned(),
                    member: path[..=i].join("."),
                })?;
            bits += off;
            if i + 1 < path.len() {
                t = self
                    .resolve(ty)
                    .ok_or(BtfError::Malformed("dangling type id"))?;
            }
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: struct outer { int a; union { int b; struct { int c; int d; }; }; struct inner in; }.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0inner\0in\0x\0".to_vec();
        let s = |name: &str| -> u32 {
            let pat = format!("\0{name}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u8> = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| t.extend_from_slice(&x.to_le_bytes()));
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { int c; int d; }
        push(&[0, (KIND_STRUCT << 24) | 2, 8, s("c"), 1, 0, s("d"), 1, 32]);
        // 3: anonymous union { int b; struct 2; }
        push(&[0, (KIND_UNION << 24) | 2, 8, s("b"), 1, 0, 0, 2, 0]);
        // 4: struct inner { int x; }
        push(&[s("inner"), (KIND_STRUCT << 24) | 1, 4, s("x"), 1, 0]);
        // 5: typedef inner_t -> 4 (reuse name "in" for brevity)
        push(&[s("in"), KIND_TYPEDEF << 24, 4]);
        // 6: struct outer { int a; union 3; inner_t in; }
        push(&[
            s("outer"),
            (KIND_STRUCT << 24) | 3,
            16,
            s("a"),
            1,
            0,
            0,
            3,
            32,
            s("in"),
            5,
            96,
        ]);
        let mut b = Vec::new();
        for v in [
            0xeb9f_u16 as u32 | (1 << 16),
            24,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn resolves_through_anonymous_members_and_typedefs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset_of("outer", &["a"]).unwrap(), 0);
        assert_eq!(btf.offset_of("outer", &["b"]).unwrap(), 4);
        assert_eq!(btf.offset_of("outer", &["d"]).unwrap(), 8);
        assert_eq!(btf.offset_of("outer", &["in", "x"]).unwrap(), 12);
        assert!(matches!(
            btf.offset_of("outer", &["zz"]),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.offset_of("nope", &["a"]),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Btf::parse(b"not btf at all, not btf at all").is_err());
        let mut b = sample();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn running_kernel_has_the_fields_we_read() {
        let Ok(Ok(btf)) = Btf::from_sys() else {
            return; // no BTF on this machine: covered by the preflight error path
        };
        assert_eq!(
            btf.func_params("tcp_sendmsg").unwrap(),
            ["sk", "msg", "size"]
        );
        assert!(btf.has_typedef("btf_trace_inet_sock_set_state"));
        assert!(btf.func_params("no_such_function_here").is_none());
        let w = btf.offset_of("tcp_sock", &["write_seq"]).unwrap();
        let c = btf.offset_of("tcp_sock", &["copied_seq"]).unwrap();
        assert!(w > 0 && c > 0 && w != c);
        assert_eq!(
            btf.offset_of("sock", &["__sk_common", "skc_daddr"])
                .unwrap(),
            0
        );
    }
}
