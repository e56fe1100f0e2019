//! Cache prefetch hints: memory the correlator is about to write or read,
//! asked for early so that its fetch overlaps other work. A hint has no
//! effect on what the program computes.

/// Cache line size of the targets this runs on.
const LINE: usize = 64;

/// Asks for every cache line of `*v`.
#[inline]
pub(crate) fn lines<T>(v: &T) {
    bytes((v as *const T).cast::<u8>(), std::mem::size_of::<T>());
}

/// Asks for every cache line of the `len` bytes at `p`.
#[inline]
pub(crate) fn bytes(p: *const u8, len: usize) {
    let end = (p as usize).saturating_add(len);
    let mut q = p.wrapping_sub(p as usize % LINE);
    while (q as usize) < end {
        line(q);
        q = q.wrapping_add(LINE);
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
fn line(p: *const u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch never faults and never changes the program's
    // state, whatever the address; SSE is in every x86_64 baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn line(_p: *const u8) {}
