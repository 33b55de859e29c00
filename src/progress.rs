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
