//! CPU thread-count setup for candle.
//!
//! candle asks `get_num_threads()` on every CPU matmul. Unless `RAYON_NUM_THREADS` (or
//! `CANDLE_NUM_THREADS`) is set, that call falls back to `num_cpus::get_physical()`, which on
//! Linux re-reads and parses `/proc/cpuinfo` each time: hundreds of times per decoded token. On
//! the 2-core CI machines this was most of the decode time (SmolLM2-135M, batch 1: 5.1 → 43.6
//! tokens/s once the variable is set; `cord bench decode`, same run). Setting the variable once,
//! to the same value candle would compute, removes the cost without changing the thread count.

/// The variable that short-circuits candle's per-call thread-count lookup.
pub const THREADS_VAR: &str = "RAYON_NUM_THREADS";

/// Sets `RAYON_NUM_THREADS` to candle's own default (the number of physical cores) when neither
/// it nor `CANDLE_NUM_THREADS` is set. Returns the value now in effect.
///
/// # Safety
/// Writes the process environment: call it at the start of `main`, before any other thread
/// exists (the same contract as [`std::env::set_var`]).
pub unsafe fn init_cpu_threads() -> usize {
    let parse = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
    };
    if let Some(n) = parse(THREADS_VAR) {
        return n;
    }
    let n = parse("CANDLE_NUM_THREADS").unwrap_or_else(|| num_cpus::get_physical().max(1));
    // SAFETY: forwarded to the caller (no other thread exists yet).
    unsafe { std::env::set_var(THREADS_VAR, n.to_string()) };
    n
}
