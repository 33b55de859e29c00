//! SIGINT, SIGTERM and SIGHUP for the whole process, handled on an ordinary thread.
//!
//! By default a signal removes the temporary files of writes in progress (so an
//! interrupted conversion leaves nothing partial) and ends the process with the shell's
//! usual status, 128 + the signal number. `glm run` and an interactive chat claim SIGINT
//! once the model is loaded: then Ctrl-C only raises a flag that stops the prompt's
//! evaluation or the answer being generated.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static INTERRUPT_CLAIMED: AtomicBool = AtomicBool::new(false);
static TERMINATION_CLAIMED: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Starts the signal thread; call once, first thing.
pub fn install() -> Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing the signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                // A second Ctrl-C before the first was handled ends the program, as in
                // llama.cpp: the work in progress did not stop soon enough.
                let claimed = match signal {
                    SIGINT => INTERRUPT_CLAIMED.load(Ordering::SeqCst),
                    SIGTERM => TERMINATION_CLAIMED.load(Ordering::SeqCst),
                    _ => false,
                };
                if claimed && !INTERRUPTED.swap(true, Ordering::SeqCst) {
                    continue;
                }
                glm_convert::files::remove_partial_files();
                std::process::exit(128 + signal);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// From now on Ctrl-C sets the interrupt flag instead of ending the process (a second
/// one, while the flag is still set, ends it).
pub fn claim_interrupts() {
    INTERRUPT_CLAIMED.store(true, Ordering::SeqCst);
}

/// As [`claim_interrupts`], for SIGTERM too: `glm serve` stops its listener and its
/// model threads itself instead of ending the process under them.
pub fn claim_termination() {
    INTERRUPT_CLAIMED.store(true, Ordering::SeqCst);
    TERMINATION_CLAIMED.store(true, Ordering::SeqCst);
}

/// True once Ctrl-C was pressed since the last [`take_interrupt`] or [`clear_interrupt`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Whether Ctrl-C was pressed, resetting the flag.
pub fn take_interrupt() -> bool {
    INTERRUPTED.swap(false, Ordering::SeqCst)
}

pub fn clear_interrupt() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}
