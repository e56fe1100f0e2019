// Rebuild the programs when the linker changes (it is installed by
// scripts/setup and may be rebuilt against a new LLVM).
fn main() {
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo").into_os_string())
    }) {
        let linker = std::path::Path::new(&home).join("bin/bpf-linker");
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
