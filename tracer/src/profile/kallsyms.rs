//! The kernel's function symbols, read once from `/proc/kallsyms` and held
//! compactly: sorted addresses, and every name in one buffer.
//!
//! blazesym's kallsyms source kept each of the ~121k lines as its own
//! allocation (5.9 MiB of heap at full load, a tenth of the agent's
//! memory). Only functions are kept here, without the `__pfx_` padding
//! symbols that kernels since 6.2 place 16 bytes before each function (a
//! return address never points into padding, so they name nothing a stack
//! holds): about 64k names in 2.2 MiB.
use std::io::{self, BufRead};

/// Longest name kept (bytes); the kernel's limit is 512, names that long
/// are generated ones, cut where they are.
const MAX_NAME: usize = 255;

/// The table. Lookups give the function that starts at or before an
/// address, as the kernel's own symbolization does.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    addrs: Vec<u64>,
    /// Where each name starts in `names`, in the order of `addrs`.
    name_at: Vec<u32>,
    name_len: Vec<u8>,
    names: Vec<u8>,
}

impl KernelSymbols {
    /// Reads `/proc/kallsyms`. Without the privilege to see addresses
    /// (they read as zero) the table is empty and every kernel frame stays
    /// unnamed.
    pub fn read() -> io::Result<KernelSymbols> {
        let f = std::fs::File::open("/proc/kallsyms")?;
        KernelSymbols::parse(io::BufReader::with_capacity(64 << 10, f))
    }

    /// Parses kallsyms text (`ADDRESS TYPE NAME [MODULE]` per line). Lines
    /// that do not parse are skipped.
    pub fn parse(mut text: impl BufRead) -> io::Result<KernelSymbols> {
        let mut entries: Vec<(u64, u32, u8)> = Vec::new();
        let mut names = Vec::new();
        let mut line = Vec::with_capacity(128);
        loop {
            line.clear();
            if text.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let mut fields = line
                .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
                .filter(|f| !f.is_empty());
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !matches!(kind, b"t" | b"T" | b"w" | b"W") || name.starts_with(b"__pfx_") {
                continue;
            }
            let Some(addr) = std::str::from_utf8(addr)
                .ok()
                .and_then(|a| u64::from_str_radix(a, 16).ok())
                .filter(|&a| a != 0)
            else {
                continue;
            };
            let name = &name[..name.len().min(MAX_NAME)];
            let Ok(at) = u32::try_from(names.len()) else {
                break;
            };
            names.extend_from_slice(name);
            entries.push((addr, at, name.len() as u8));
        }
        // Mostly in address order already (modules follow the core).
        entries.sort_by_key(|e| e.0);
        // Of symbols at one address (aliases), the first listed names it.
        entries.dedup_by_key(|e| e.0);
        names.shrink_to_fit();
        Ok(KernelSymbols {
            addrs: entries.iter().map(|e| e.0).collect(),
            name_at: entries.iter().map(|e| e.1).collect(),
            name_len: entries.iter().map(|e| e.2).collect(),
            names,
        })
    }

    /// The function containing `addr`: the last one starting at or before
    /// it.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        let at = self.name_at[i] as usize;
        let name = &self.names[at..at + usize::from(self.name_len[i])];
        std::str::from_utf8(name).ok()
    }

    /// Functions held.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.addrs.capacity() * 8
            + self.name_at.capacity() * 4
            + self.name_len.capacity()
            + self.names.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff810000f0 t __pfx_verify_cpu
ffffffff81000100 t verify_cpu
ffffffff81234560 D some_data
ffffffff81000200 W weak_fn
0000000000000000 A fixed_percpu_data
ffffffffc0001000 t nf_hook_thing\t[nf_conntrack]
garbage
";

    #[test]
    fn names_the_function_at_or_before_an_address() {
        let k = KernelSymbols::parse(TEXT.as_bytes()).unwrap();
        assert_eq!(
            k.len(),
            4,
            "data, absolute and padding symbols are left out"
        );
        assert_eq!(k.lookup(0xffff_ffff_8100_0000), Some("_stext"));
        assert_eq!(k.lookup(0xffff_ffff_8100_00f8), Some("_stext"));
        assert_eq!(k.lookup(0xffff_ffff_8100_0105), Some("verify_cpu"));
        assert_eq!(k.lookup(0xffff_ffff_8100_0200), Some("weak_fn"));
        assert_eq!(k.lookup(0xffff_ffff_c000_1010), Some("nf_hook_thing"));
        assert_eq!(k.lookup(0xffff_ffff_80ff_ffff), None);
    }

    #[test]
    fn without_addresses_the_table_is_empty() {
        let k = KernelSymbols::parse("0000000000000000 T _stext\n".as_bytes()).unwrap();
        assert_eq!(k.len(), 0);
        assert_eq!(k.lookup(0xffff_ffff_8100_0000), None);
    }

    #[test]
    fn this_hosts_table_names_a_kernel_function_where_addresses_can_be_read() {
        let k = KernelSymbols::read().unwrap();
        if k.len() == 0 {
            // Not root: addresses read as zero (never so in CI).
            assert!(
                std::env::var_os("CI").is_none(),
                "no kernel addresses in CI"
            );
            return;
        }
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let addr = text
            .lines()
            .find_map(|l| l.strip_suffix(" T tcp_sendmsg"))
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            .expect("tcp_sendmsg in kallsyms");
        assert_eq!(k.lookup(addr + 1), Some("tcp_sendmsg"));
        // Address, name and its place: ~35 bytes a function here (a line
        // of the file is ~44, one allocation per name ~60 with malloc's).
        assert!(
            k.heap_bytes() < k.len() * 48,
            "{} bytes for {} functions",
            k.heap_bytes(),
            k.len()
        );
    }
}
