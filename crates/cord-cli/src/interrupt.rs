//! Ctrl-C / SIGTERM during `cord synth`: the first signal asks the run to stop after the
//! current round (every record finished so far is written whole and synced, the summary is
//! printed, the exit status is 128 + signal: 130 for SIGINT, 143 for SIGTERM); a second one
//! exits at once with the same status, like a kill (at most a torn last line, which `--resume`
//! cuts away).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::Result;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static ANNOUNCED: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
mod sys {
    use std::sync::atomic::Ordering;

    pub const SIGINT: i32 = libc::SIGINT;
    pub const SIGTERM: i32 = libc::SIGTERM;

    /// Async-signal-safe: atomics and `_exit` only.
    extern "C" fn on_signal(sig: libc::c_int) {
        if super::REQUESTED.load(Ordering::SeqCst) {
            // SAFETY: `_exit` is async-signal-safe.
            unsafe { libc::_exit(128 + sig) }
        }
        // The signal first, so that whoever sees the request also sees which signal it was.
        super::SIGNAL.store(sig, Ordering::SeqCst);
        super::REQUESTED.store(true, Ordering::SeqCst);
    }

    pub fn install() -> anyhow::Result<()> {
        for sig in [SIGINT, SIGTERM] {
            // SAFETY: a zeroed `sigaction` is valid; the handler only touches atomics and
            // calls `_exit`.
            let rc = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut())
            };
            if rc != 0 {
                anyhow::bail!(
                    "installing the handler of signal {sig}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(())
    }
}

#[cfg(not(unix))]
mod sys {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;

    /// Elsewhere Ctrl-C keeps its default (the process ends; `--resume` repairs the output).
    pub fn install() -> anyhow::Result<()> {
        Ok(())
    }
}

/// Installs the handlers (idempotent).
pub fn install() -> Result<()> {
    sys::install()
}

/// Whether a stop was asked for; says so on stderr the first time it sees it.
pub fn requested() -> bool {
    let yes = REQUESTED.load(Ordering::SeqCst);
    if yes && !ANNOUNCED.swap(true, Ordering::SeqCst) {
        eprintln!(
            "\n{}: stopping after the current round (the problems in flight are redone by --resume); signal again to abort now",
            received()
        );
    }
    yes
}

/// The exit status for the signal received: 128 + signal (130 when none was recorded).
pub fn exit_status() -> u8 {
    let sig = match SIGNAL.load(Ordering::SeqCst) {
        s if s > 0 => s,
        _ => sys::SIGINT,
    };
    (128 + sig).clamp(0, 255) as u8
}

/// The received signal's name.
pub fn received() -> &'static str {
    match SIGNAL.load(Ordering::SeqCst) {
        s if s == sys::SIGINT => "SIGINT",
        s if s == sys::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
