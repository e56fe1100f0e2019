//! Builds the eBPF programs (tracer-ebpf) from source and hands the object to
//! the agent, which embeds it. The programs need Debian's rustc (it ships the
//! standard-library source that `-Z build-std=core` needs for the BPF target)
//! and bpf-linker built against the same LLVM; `scripts/setup` installs both.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const BPF_RUSTC: &str = "/usr/bin/rustc";

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("workspace root")?.to_path_buf();
    let ebpf = root.join("tracer-ebpf");
    for dir in ["src", "common/src"] {
        println!("cargo:rerun-if-changed={}", ebpf.join(dir).display());
    }
    for file in ["Cargo.toml", "build.rs", "common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf.join(file).display());
    }
    println!("cargo:rerun-if-changed={BPF_RUSTC}");

    if !Path::new(BPF_RUSTC).exists() {
        bail!("{BPF_RUSTC} is missing: run `scripts/setup` (installs Debian's rustc-web, rust-web-src and bpf-linker)");
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let linker_dir = cargo_home.join("bin");
    if !linker_dir.join("bpf-linker").exists() {
        bail!(
            "bpf-linker is missing from {}: run `scripts/setup`",
            linker_dir.display()
        );
    }

    // A separate target dir: the outer cargo holds the lock on its own.
    let target_dir = root.join("target").join("ebpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // The outer build's settings (rustflags, wrappers, target) must not
    // leak into the BPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    let path = env::join_paths(
        std::iter::once(linker_dir)
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let status = cmd
        .current_dir(&ebpf)
        .env("PATH", path)
        .env("RUSTC", BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        // BTF in the object: BTF-defined maps (socket storage) need it, and
        // the verifier's messages then name source lines. CPU v3 (kernels
        // since 5.1; the agent needs 6.3): atomic fetch-and-add and exchange,
        // which the lanes use.
        .env(
            "RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3",
        )
        .args([
            "build",
            "--release",
            "-p",
            "tracer-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .context("running cargo for the eBPF programs")?;
    if !status.success() {
        bail!("building the eBPF programs failed ({status})");
    }
    let object = target_dir.join("bpfel-unknown-none/release/tracer-ebpf");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("tracer-ebpf.o");
    std::fs::copy(&object, &out).with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}
