//! `tracer`: the node agent. See `tracer --help`.
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use tracer::{
    cli::{Cli, Command},
    kernel, pipeline, preflight, sched,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line, each cause once (some
            // errors quote their source in their own message).
            eprintln!("tracer: error: {}", tracer::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Check { cgroup_root } => {
            let env = preflight::check(cgroup_root.as_deref())?;
            let calls: Vec<String> = env
                .calls
                .candidates(None)?
                .iter()
                .map(|(s, _)| s.to_string())
                .collect();
            println!(
                "ok: kernel {}, BTF present, tracefs mounted, cgroup v2 at {}, sources of calls offered: {}",
                env.kernel,
                env.cgroup2_root.display(),
                calls.join(", ")
            );
            Ok(())
        }
        Command::Run(args) => {
            let cfg = args.resolve()?;
            raise_open_file_limit();
            let env = preflight::check(cfg.cgroup_root.as_deref())?;
            sched::set_nice(cfg.nice);
            let calls = env.calls.candidates(cfg.kernel.capture_source)?;
            let kernel = kernel::Kernel::load(&cfg.kernel, &env.btf, &calls, &env.cgroup2_root)?;
            Ok(pipeline::run(cfg, kernel)?)
        }
    }
}

/// The profiler keeps binaries open (unwind data and symbols of every
/// profiled executable and library): lift the soft limit on open files to
/// the hard one. Failing is harmless (counted by the profiler as binaries it
/// could not load).
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: valid pointer to an rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}
