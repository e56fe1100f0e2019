//! A Go program's own function table (`.gopclntab`). The runtime needs it
//! for stack traces, so a program stripped of its symbol table
//! (`-ldflags=-s`, how most Go releases ship) still names every function
//! and where its code starts; peers read it for the same reason.
//!
//! Two layouts matter here (amd64, Go 1.17 and later): Go 1.16-1.17 keep
//! absolute entry addresses in the table; Go 1.18 and later keep 32-bit
//! offsets from the start of the text, written in the header.
use object::{Object, ObjectSection, SectionKind};

/// Header magics (Go's `runtime/symtab.go`).
const GO116: u32 = 0xffff_fffa;
const GO118: u32 = 0xffff_fff0;
const GO120: u32 = 0xffff_fff1;

/// Where functions and their names are, in one table.
pub struct FuncTab<'d> {
    data: &'d [u8],
    /// Go 1.18+: entries are offsets from `text_start`.
    relative: bool,
    text_start: u64,
    nfunc: usize,
    /// Offsets in `data` of the names and of the function table.
    names: usize,
    functab: usize,
}

impl<'d> FuncTab<'d> {
    /// The table of `obj`, when it has one this reader knows.
    pub fn parse(obj: &object::File<'d>) -> Option<FuncTab<'d>> {
        let (_, data) = super::gotypes::go_section(obj, ".gopclntab")?;
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
        };
        let magic = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
        // The pointer size is at 7; only 64-bit programs are probed.
        if data.get(7) != Some(&8) {
            return None;
        }
        let relative = match magic {
            GO118 | GO120 => true,
            GO116 => false,
            _ => return None,
        };
        let nfunc = usize::try_from(word(8)?).ok()?;
        // After nfunc and nfiles: [textStart,] funcnametab, cutab, filetab,
        // pctab, functab.
        let fields = if relative { 24 } else { 16 };
        let mut text_start = if relative { word(24)? } else { 0 };
        if relative && text_start == 0 {
            // Left for the loader to fill in some builds: the text section.
            text_start = obj
                .sections()
                .find(|s| s.kind() == SectionKind::Text && s.name() == Ok(".text"))?
                .address();
        }
        let names = usize::try_from(word(fields + 8)?).ok()?;
        let functab = usize::try_from(word(fields + 40)?).ok()?;
        let tab = FuncTab {
            data,
            relative,
            text_start,
            nfunc,
            names,
            functab,
        };
        // Every entry and the end address must be in the table.
        tab.entry(nfunc)?;
        Some(tab)
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.data.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    }

    fn u64_at(&self, at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(
            self.data.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    }

    /// Bytes per function table entry: (entry, offset of its `_func`).
    fn stride(&self) -> usize {
        if self.relative {
            8
        } else {
            16
        }
    }

    /// The link-time entry address of function `i` (`nfunc`: the end of
    /// the last one).
    fn entry(&self, i: usize) -> Option<u64> {
        let at = self.functab.checked_add(i.checked_mul(self.stride())?)?;
        if self.relative {
            Some(self.text_start + u64::from(self.u32_at(at)?))
        } else {
            self.u64_at(at)
        }
    }

    /// The name of function `i`.
    fn name(&self, i: usize) -> Option<&'d [u8]> {
        let at = self.functab + i * self.stride();
        let func = if self.relative {
            usize::try_from(self.u32_at(at + 4)?).ok()?
        } else {
            usize::try_from(self.u64_at(at + 8)?).ok()?
        };
        // `_func` starts with the entry (a 32-bit offset or an address),
        // then the name's offset in the name table.
        let entry_len = if self.relative { 4 } else { 8 };
        let name_off = self.u32_at(self.functab.checked_add(func)? + entry_len)?;
        let start = self.names.checked_add(usize::try_from(name_off).ok()?)?;
        let rest = self.data.get(start..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..len])
    }

    /// (link-time address, size) of each function of `wanted`, in its
    /// order; a size runs to the next function's entry (alignment padding
    /// included, which holds no RET).
    pub fn find(&self, wanted: &[&str]) -> Vec<Option<(u64, u64)>> {
        let mut found = vec![None; wanted.len()];
        for i in 0..self.nfunc {
            let Some(name) = self.name(i) else {
                continue;
            };
            let Some(w) = wanted.iter().position(|w| w.as_bytes() == name) else {
                continue;
            };
            if let (Some(start), Some(end)) = (self.entry(i), self.entry(i + 1)) {
                if end > start {
                    found[w] = Some((start, end - start));
                }
            }
        }
        found
    }
}
