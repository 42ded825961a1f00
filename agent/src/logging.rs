//! A small stderr logger: systemd puts stderr in the journal, with the unit's name and a
//! timestamp, so a line needs only the level and the message.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // <N> prefixes are sd-daemon(3) priorities, which journald reads off stderr lines.
        let prio = match r.level() {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        let journal = std::env::var_os("JOURNAL_STREAM").is_some();
        if journal {
            eprintln!("<{prio}>{}", r.args());
        } else {
            eprintln!(
                "berth-agent: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

/// `BERTH_LOG` = error, warn, info (default), debug or trace.
pub fn init() {
    let level = std::env::var("BERTH_LOG")
        .ok()
        .and_then(|s| s.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    let _ = log::set_logger(&Stderr);
    log::set_max_level(level);
}
