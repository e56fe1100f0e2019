//! The reorder window, sized from how late inputs (messages, closes,
//! runtime-hook events) really reach the correlator.
//!
//! Every span waits one window for evidence that may still be on its way,
//! and is kept two more for late children: at line rate the records held
//! are the span rate times those waits, so a window far above the real
//! lateness costs memory and cache misses for nothing. The window is the
//! configured one at start (a backlog is likely then), follows the latest
//! input at once when lateness grows, and shrinks to a multiple of
//! the largest lateness of the last full epoch (a second, a tenth of one
//! after a quiet epoch or at start), never below the
//! configured floor nor above the configured window. It shrinks only
//! where holding costs: when an epoch's inputs were too few to fill a
//! configured window with [`BUSY_INPUTS`], the window stays the configured
//! one. Lateness measured on sparse traffic says little about the next
//! stall (a starved virtual machine, a reader descheduled for 100 ms),
//! and a full window costs next to nothing there. A message later than
//! the window still makes a root (counted), never a wrong parent: that is
//! the correlator's rule whatever the window.

/// Length of a measuring epoch (correlator clock).
const EPOCH_NS: u64 = 1_000_000_000;
/// Length of an epoch that follows a quiet one (and of the first). Traffic
/// that turns busy after quiet finds the window at the configured one, and
/// every span made meanwhile holds its record that long: a second of it was
/// twice the records of any later second (30k at 70k spans/s, most of the
/// agent's peak memory). A backlog shows in the first inputs (the window
/// grows at once), so a tenth of a second measures it. After a busy epoch
/// the epoch is a second again: a stall seen in it keeps the window wide
/// until a whole calm second has passed.
const QUIET_EPOCH_NS: u64 = 100_000_000;
/// Window per unit of measured lateness: room for a late message's partner
/// to be later still.
const FACTOR: u64 = 2;
/// Inputs per configured window from which a shorter window pays: about
/// 1,000 spans held, half a megabyte of records and their texts.
const BUSY_INPUTS: u64 = 2_048;

#[derive(Clone, Debug)]
pub(crate) struct ReorderWindow {
    min_ns: u64,
    max_ns: u64,
    epoch_start: Option<u64>,
    /// Length of the epoch under way.
    epoch_ns: u64,
    /// Largest lateness seen in this epoch.
    late_now: u64,
    /// Inputs seen in this epoch.
    inputs_now: u64,
    current: u64,
}

impl ReorderWindow {
    pub(crate) fn new(min_ns: u64, max_ns: u64) -> Self {
        ReorderWindow {
            min_ns: min_ns.min(max_ns),
            max_ns,
            epoch_start: None,
            epoch_ns: QUIET_EPOCH_NS,
            late_now: 0,
            inputs_now: 0,
            current: max_ns,
        }
    }

    /// The window now (ns).
    pub(crate) fn get(&self) -> u64 {
        self.current
    }

    /// `scaled_ns` scaled as the window is to its configured maximum: waits
    /// that are multiples of the window follow it.
    pub(crate) fn scale(&self, scaled_ns: u64) -> u64 {
        if self.max_ns == 0 {
            return scaled_ns;
        }
        (u128::from(scaled_ns) * u128::from(self.current) / u128::from(self.max_ns)) as u64
    }

    /// An input stamped `t_ns` arrived when the clock was at `clock_ns`.
    pub(crate) fn observe(&mut self, clock_ns: u64, t_ns: u64) {
        self.inputs_now += 1;
        let late = clock_ns.saturating_sub(t_ns);
        if late > self.late_now {
            self.late_now = late;
            // Growth is at once: deadlines set from now on only move later.
            self.current = self.current.max(self.bounded(late));
        }
    }

    /// Time moved to `clock_ns`: at an epoch's end, the window becomes what
    /// the epoch measured.
    pub(crate) fn tick(&mut self, clock_ns: u64) {
        let Some(start) = self.epoch_start else {
            self.epoch_start = Some(clock_ns);
            return;
        };
        let elapsed = clock_ns.saturating_sub(start);
        if elapsed < self.epoch_ns {
            return;
        }
        // Inputs per configured window, over the epoch (which an idle
        // stretch lengthens).
        let per_window =
            u128::from(self.inputs_now) * u128::from(self.max_ns) / u128::from(elapsed);
        let busy = per_window >= u128::from(BUSY_INPUTS);
        self.current = if busy {
            self.bounded(self.late_now)
        } else {
            self.max_ns
        };
        self.late_now = 0;
        self.inputs_now = 0;
        self.epoch_start = Some(clock_ns);
        self.epoch_ns = if busy { EPOCH_NS } else { QUIET_EPOCH_NS };
    }

    fn bounded(&self, late: u64) -> u64 {
        late.saturating_mul(FACTOR).clamp(self.min_ns, self.max_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Inputs every 20 us from `from_ms` to `to_ms`, each `late_ms` late:
    /// 7,500 per configured window, busy.
    fn busy(w: &mut ReorderWindow, from_ms: u64, to_ms: u64, late_ms: u64) {
        for t in (from_ms * MS..to_ms * MS).step_by(20_000) {
            w.observe(t + late_ms * MS, t);
            w.tick(t + late_ms * MS);
        }
    }

    /// Inputs every `every_ms` from `from_ms` to `to_ms`, never late.
    fn quiet(w: &mut ReorderWindow, from_ms: u64, to_ms: u64, every_ms: usize) {
        for t in (from_ms..to_ms).step_by(every_ms).map(|i| i * MS) {
            w.observe(t, t);
            w.tick(t);
        }
    }

    #[test]
    fn starts_at_the_configured_window_and_shrinks_after_a_calm_busy_epoch() {
        let mut w = ReorderWindow::new(30 * MS, 150 * MS);
        assert_eq!(w.get(), 150 * MS);
        w.tick(0);
        busy(&mut w, 0, 1_000, 5);
        // 5 ms late at most: twice that is below the floor.
        w.tick(1_005 * MS);
        assert_eq!(w.get(), 30 * MS);
        assert_eq!(w.scale(300 * MS), 60 * MS);
    }

    #[test]
    fn grows_at_once_and_shrinks_only_at_an_epoch_end() {
        let mut w = ReorderWindow::new(30 * MS, 150 * MS);
        w.tick(0);
        busy(&mut w, 0, 1_000, 1);
        w.tick(1_001 * MS);
        assert_eq!(w.get(), 30 * MS);
        w.observe(1_100 * MS, 1_060 * MS);
        assert_eq!(w.get(), 80 * MS);
        w.observe(1_500 * MS, 1_200 * MS);
        assert_eq!(w.get(), 150 * MS, "never above the configured window");
        busy(&mut w, 1_500, 2_000, 1);
        assert_eq!(w.get(), 150 * MS);
        // The next epoch is calm, but the window follows the one that ended.
        w.tick(2_001 * MS);
        assert_eq!(w.get(), 150 * MS);
        busy(&mut w, 2_001, 3_000, 1);
        w.tick(3_002 * MS);
        assert_eq!(w.get(), 30 * MS);
    }

    #[test]
    fn the_first_epoch_is_short_so_a_busy_start_holds_the_configured_window_briefly() {
        let mut w = ReorderWindow::new(30 * MS, 150 * MS);
        w.tick(0);
        busy(&mut w, 0, 98, 1);
        assert_eq!(w.get(), 150 * MS);
        busy(&mut w, 98, 101, 1);
        assert_eq!(w.get(), 30 * MS);
        // A backlog at start keeps it wide: lateness seen in the first
        // epoch is what the window is made of.
        let mut w = ReorderWindow::new(30 * MS, 150 * MS);
        w.tick(0);
        busy(&mut w, 0, 20, 60);
        busy(&mut w, 20, 200, 1);
        assert_eq!(w.get(), 120 * MS);
    }

    #[test]
    fn traffic_turning_busy_after_quiet_shrinks_it_within_two_tenths_of_a_second() {
        let mut w = ReorderWindow::new(30 * MS, 150 * MS);
        w.tick(0);
        quiet(&mut w, 0, 5_000, 50);
        assert_eq!(w.get(), 150 * MS);
        busy(&mut w, 5_000, 5_190, 1);
        assert_eq!(w.get(), 30 * MS);
    }

    #[test]
    fn sparse_traffic_keeps_the_configured_window() {
        let mut w = ReorderWindow::new(30 * MS, 150 * MS);
        w.tick(0);
        // 1,000 inputs a second, never late: 150 per window, too few to pay.
        quiet(&mut w, 0, 2_000, 1);
        assert_eq!(w.get(), 150 * MS);
        // Busy, it shrinks at the end of the first busy epoch (a tenth of
        // a second after quiet ones, then a second); sparse again, it is
        // the configured one again.
        busy(&mut w, 2_000, 3_200, 1);
        w.tick(3_201 * MS);
        assert_eq!(w.get(), 30 * MS);
        quiet(&mut w, 3_201, 4_700, 1);
        assert_eq!(w.get(), 150 * MS);
    }

    #[test]
    fn a_floor_above_the_window_is_the_window() {
        let mut w = ReorderWindow::new(30 * MS, 10 * MS);
        w.tick(0);
        busy(&mut w, 0, 2_000, 1);
        assert_eq!(w.get(), 10 * MS);
    }
}
