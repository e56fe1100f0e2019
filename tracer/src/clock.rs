//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall time,
//! converted with one offset taken at start-up.

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Now on the kernel's monotonic clock, the clock of every record.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Converts monotonic nanoseconds to wall time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

impl Clock {
    /// Samples both clocks now.
    pub fn new() -> Clock {
        let mono = monotonic_ns();
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real as i128 - mono as i128,
        }
    }

    /// Unix nanoseconds of a monotonic timestamp.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }

    /// `HH:MM:SS.micros` UTC of a monotonic timestamp.
    pub fn format_wall(&self, mono_ns: u64) -> String {
        let ns = self.unix_ns(mono_ns);
        let secs = ns / 1_000_000_000;
        let day = secs % 86_400;
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            day / 3600,
            day % 3600 / 60,
            day % 60,
            ns % 1_000_000_000 / 1000
        )
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn converts_now_to_about_now() {
        let c = Clock::new();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(c.unix_ns(monotonic_ns()).abs_diff(now) < 1_000_000_000);
        assert_eq!(c.format_wall(monotonic_ns()).len(), "00:00:00.000000".len());
    }
}
