//! A progress bar for long conversions: drawn on a terminal, silent when piped.

use indicatif::{ProgressBar, ProgressStyle};

pub struct ConvertProgress {
    bar: ProgressBar,
}

impl Default for ConvertProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl ConvertProgress {
    pub fn new() -> Self {
        let bar = ProgressBar::hidden();
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message("converting");
        Self { bar }
    }
}

impl glm_convert::Progress for ConvertProgress {
    fn begin(&self, total_bytes: u64) {
        self.bar.set_length(total_bytes);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Prompt evaluation as it goes: after about a second, a line on the terminal with the
/// tokens done, the total and the speed; and the place where Ctrl-C stops it.
pub struct PromptProgress {
    started: std::time::Instant,
    bar: Option<ProgressBar>,
    show: bool,
}

/// Shorter evaluations finish before a progress line would help.
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl PromptProgress {
    pub fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            bar: None,
            show: crate::terminal::stderr_styled(),
        }
    }

    /// A watcher for `ChatSession::watch_prompts`: one progress line per prompt, and
    /// `false` (stop) once Ctrl-C was pressed.
    pub fn watcher() -> crate::engine::PromptWatcher {
        let mut current: Option<Self> = None;
        Box::new(move |done, total| {
            let progress = current.get_or_insert_with(Self::new);
            let go_on = progress.update(done, total);
            if done >= total || !go_on {
                progress.clear();
                current = None;
            }
            go_on
        })
    }

    fn update(&mut self, done: usize, total: usize) -> bool {
        if crate::signals::interrupted() {
            return false;
        }
        let elapsed = self.started.elapsed();
        if self.show && self.bar.is_none() && elapsed >= PROGRESS_AFTER && done < total {
            let bar = ProgressBar::with_draw_target(Some(total as u64), indicatif::ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
            bar.set_message(format!("prompt: {done}/{total} tokens, {rate:.1} tok/s"));
        }
        true
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
