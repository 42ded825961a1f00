//! Upload progress on stderr: a bar redrawn in place on a terminal, a line per tenth otherwise.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use super::ProgressMode;

/// Progress on stderr: a bar on a terminal, a line per tenth otherwise.
pub struct Progress {
    mode: ProgressMode,
    tty: bool,
    total: u64,
    started: Instant,
    last_draw: Option<Instant>,
    last_tenth: u64,
}

impl Progress {
    pub fn new(mode: ProgressMode, total: u64) -> Progress {
        Progress {
            mode,
            tty: mode == ProgressMode::Auto && std::io::stderr().is_terminal(),
            total,
            started: Instant::now(),
            last_draw: None,
            last_tenth: 0,
        }
    }

    /// `covered` blocks of `total` done: `uploaded` sent, `skipped` all-zero, `bytes` sent.
    pub fn update(&mut self, covered: u64, uploaded: u64, skipped: u64, bytes: u64) {
        if self.mode == ProgressMode::Quiet || self.total == 0 {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let mib_s = bytes as f64 / (1 << 20) as f64 / secs;
        if self.tty {
            let now = Instant::now();
            let due = self
                .last_draw
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(100));
            if !due && covered < self.total {
                return;
            }
            self.last_draw = Some(now);
            let width = 30;
            let filled = (covered * width / self.total) as usize;
            eprint!(
                "\r[{}{}] {:3}% {covered}/{} blocks, {uploaded} sent, {skipped} zero, {mib_s:.1} MiB/s ",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                covered * 100 / self.total,
                self.total
            );
            if covered == self.total {
                eprintln!();
            }
        } else {
            let tenth = covered * 10 / self.total;
            if tenth > self.last_tenth || covered == self.total {
                self.last_tenth = tenth;
                eprintln!(
                    "berth-image: upload {}%: {covered}/{} blocks ({uploaded} sent, {skipped} all-zero skipped), {mib_s:.1} MiB/s",
                    covered * 100 / self.total,
                    self.total
                );
            }
        }
    }
}
