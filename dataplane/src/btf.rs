//! Member offsets of kernel structs, read from the kernel's own BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF programs are Rust, which has no CO-RE field relocations; the few kernel structs the
//! exec audit reads (`linux_binprm`, `task_struct`, `mm_struct`) change layout between kernel
//! builds. So the loader looks each field up here, in the running kernel's BTF, and hands the
//! byte offsets to the program as load-time globals: the program reads what this kernel has,
//! or the exec audit is not loaded at all (a field missing is an error naming it).
//!
//! Only what that needs is parsed: the header, the string section, and every type's record
//! (its size depends on its kind); struct and union members are kept, anonymous members are
//! searched through (several `mm_struct` fields live in an anonymous struct).
use std::collections::HashMap;

/// `BTF_KIND_*`.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

const MAGIC: u16 = 0xeb9f;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("BTF kind {0} is not known")]
    UnknownKind(u32),
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {0} has no member {1} in the kernel's BTF")]
    NoMember(String, String),
}

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
enum Type {
    /// A struct or union and its members.
    Composite(Vec<Member>),
    /// typedef, const, volatile, restrict, type tag: another type under a name or qualifier.
    Alias(u32),
    Other,
}

/// The types of one BTF blob, by id (id 0 is `void`).
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>,
    /// Struct name → type id (the first of that name).
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    let s = b.get(at..at + 4).ok_or(BtfError::Malformed("truncated"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> std::io::Result<Result<Btf, BtfError>> {
        Ok(Btf::parse(&std::fs::read("/sys/kernel/btf/vmlinux")?))
    }

    /// Parses a little-endian BTF blob (what the kernel exposes on x86_64 and arm64).
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != MAGIC {
            return Err(BtfError::Malformed("no BTF header"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let section = |off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|s| Some((s, s.checked_add(len)?)))
                .and_then(|(s, e)| b.get(s..e))
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let types_b = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut types = vec![Type::Other];
        let mut structs = HashMap::new();
        let mut at = 0;
        while at < types_b.len() {
            let (name, info, size_or_type) = (u32_at(types_b, at)?, u32_at(types_b, at + 4)?, u32_at(types_b, at + 8)?);
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let (t, extra) = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let off = u32_at(types_b, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_b, m)?,
                            type_id: u32_at(types_b, m + 4)?,
                            // With kind_flag the top 8 bits are a bitfield's size.
                            bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
                        });
                    }
                    (Type::Composite(members), vlen * 12)
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    (Type::Alias(size_or_type), 0)
                }
                KIND_INT | KIND_VAR | KIND_DECL_TAG => (Type::Other, 4),
                KIND_ARRAY => (Type::Other, 12),
                KIND_ENUM | KIND_FUNC_PROTO => (Type::Other, vlen * 8),
                KIND_DATASEC | KIND_ENUM64 => (Type::Other, vlen * 12),
                // PTR, FWD, FUNC, FLOAT: nothing follows.
                2 | 7 | 12 | 16 => (Type::Other, 0),
                k => return Err(BtfError::UnknownKind(k)),
            };
            at += extra;
            if kind == KIND_STRUCT && name != 0 {
                let id = types.len() as u32;
                if let Some(n) = string_at(&strings, name) {
                    structs.entry(n.to_owned()).or_insert(id);
                }
            }
            types.push(t);
        }
        Ok(Btf { strings, types, structs })
    }

    /// The byte offset of `member` in struct `name`, through anonymous struct and union members.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self.structs.get(name).ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        self.find(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(name.to_owned(), member.to_owned()))
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let Type::Composite(members) = self.resolve(id)? else { return None };
        for m in members {
            if m.name != 0 {
                if string_at(&self.strings, m.name) == Some(member) {
                    return Some(m.bit_offset);
                }
            } else if let Some(inner) = self.find(m.type_id, member, depth + 1) {
                return Some(m.bit_offset + inner);
            }
        }
        None
    }

    /// `id` with typedefs and qualifiers looked through.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..16 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                t => return Some(t),
            }
        }
        None
    }
}

fn string_at(strings: &[u8], off: u32) -> Option<&str> {
    let s = strings.get(off as usize..)?;
    let end = s.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&s[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `struct outer { int a; union { int b; struct { int c; } ; }; }`-like, with
    /// hand-laid offsets.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0int\0".to_vec();
        let (outer, a, b, c, int) = (1u32, 7, 9, 11, 13);
        let mut t = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, size: u32, extra: &[u32]| {
            for v in [name, (kind << 24) | vlen, size] {
                t.extend_from_slice(&v.to_le_bytes());
            }
            for v in extra {
                t.extend_from_slice(&v.to_le_bytes());
            }
        };
        ty(int, KIND_INT, 0, 4, &[32]); // id 1
        ty(0, KIND_STRUCT, 1, 4, &[c, 1, 0]); // id 2: anonymous { c }
        ty(0, KIND_UNION, 2, 4, &[b, 1, 0, 0, 2, 0]); // id 3: anonymous union { b; {c} }
        ty(0, KIND_CONST, 0, 3, &[]); // id 4: const union
        ty(outer, KIND_STRUCT, 2, 16, &[a, 1, 0, 0, 4, 64]); // id 5: outer { a @0; union @8 }
        let mut out = Vec::new();
        for v in [u32::from(MAGIC) | (1 << 16), 24, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn members_are_found_through_anonymous_members_and_qualifiers() {
        let btf = Btf::parse(&blob()).expect("parse");
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "b"), Ok(8));
        assert_eq!(btf.member_offset("outer", "c"), Ok(8));
        assert_eq!(btf.member_offset("outer", "d"), Err(BtfError::NoMember("outer".into(), "d".into())));
        assert!(matches!(btf.member_offset("inner", "a"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn malformed_blobs_are_refused_not_read_past() {
        let b = blob();
        for n in 0..b.len() {
            // Any prefix either parses (a shorter type section is valid BTF) or is refused.
            let _ = Btf::parse(&b[..n]);
        }
        let mut bad = b.clone();
        bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&bad).is_err());
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
    }

    /// The running kernel's BTF has what the exec audit reads.
    #[test]
    fn the_kernels_btf_has_the_exec_audit_fields() {
        let Ok(Ok(btf)) = Btf::from_kernel() else {
            eprintln!("skipped: no readable /sys/kernel/btf/vmlinux");
            return;
        };
        for (s, m) in [
            ("linux_binprm", "filename"),
            ("task_struct", "real_parent"),
            ("task_struct", "tgid"),
            ("task_struct", "mm"),
            ("mm_struct", "arg_start"),
            ("mm_struct", "arg_end"),
        ] {
            let off = btf.member_offset(s, m).unwrap_or_else(|e| panic!("{e}"));
            assert!(off < 16384, "{s}.{m} at {off}");
        }
        assert!(btf.member_offset("mm_struct", "arg_end").ok() > btf.member_offset("mm_struct", "arg_start").ok());
    }
}
