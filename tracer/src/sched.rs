//! The agent's scheduling priority. Linux keeps a nice value per thread, and
//! a thread starts with its creator's, so the value set on the main thread
//! before the others exist holds for all of them; the profiling worker then
//! steps back from it.
use tracing::{debug, info, warn};

/// How many nice levels the profiling worker runs below the rest of the
/// agent: about a tenth of the CPU weight. Its samples wait in a bounded,
/// counted queue, while the capture reader loses records when it is late.
pub const PROFILE_NICE_STEP: i32 = 10;

/// Sets the calling thread's nice value (`--nice`); 0 leaves it as started.
/// Failing (no CAP_SYS_NICE) leaves the agent at its priority, said once.
pub fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    match set_thread_nice(nice) {
        Ok(()) => info!(nice, "scheduling priority set (--nice)"),
        Err(error) => warn!(
            nice,
            %error,
            "could not set the scheduling priority (--nice); the agent runs at the priority it was started with"
        ),
    }
}

/// Lowers the calling thread's priority by `step` nice levels (at most to
/// 19). Lowering needs no privilege.
pub fn step_back(step: i32) {
    let Some(now) = thread_nice() else {
        return;
    };
    let nice = (now + step).min(19);
    match set_thread_nice(nice) {
        Ok(()) => debug!(nice, "thread priority lowered"),
        Err(error) => warn!(nice, %error, "could not lower the thread's priority"),
    }
}

fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: plain system call; who = 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's nice value.
fn thread_nice() -> Option<i32> {
    // getpriority returns -1 both for nice -1 and for an error: errno tells.
    // SAFETY: errno is thread-local; plain system call.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        (n != -1 || *libc::__errno_location() == 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_steps_back_from_its_creator() {
        let before = thread_nice().unwrap();
        let child = std::thread::spawn(|| {
            step_back(PROFILE_NICE_STEP);
            thread_nice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(child, (before + PROFILE_NICE_STEP).min(19));
        // The creator keeps its own.
        assert_eq!(thread_nice().unwrap(), before);
    }
}
