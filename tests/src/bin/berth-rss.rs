//! `berth-rss REPORT LIMIT_SECS PROGRAM ARGS...`: runs PROGRAM (stdin, stdout and stderr
//! inherited), kills it by PID after LIMIT_SECS, and writes `EXIT_CODE PEAK_RSS_KIB` to REPORT,
//! the peak RSS from `wait4(2)`.
//!
//! A separate small process because a child's `ru_maxrss` includes the memory of the process
//! that spawned it (shared until the child executes): measured from a test process holding
//! large scripted answers, the figure would be the test's, not the agent's.

use std::process::Command;
use std::time::{Duration, Instant};

// The child is reaped by wait4(2) below, which also gives its rusage; `Child::wait` cannot.
#[allow(clippy::zombie_processes)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [report, limit, program, rest @ ..] = args.as_slice() else {
        eprintln!("usage: berth-rss REPORT LIMIT_SECS PROGRAM ARGS...");
        std::process::exit(2);
    };
    let limit = Duration::from_secs(limit.parse().expect("LIMIT_SECS is a number"));
    let child = Command::new(program).args(rest).spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let started = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child, with valid pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "wait4 failed");
        if started.elapsed() > limit {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    std::fs::write(report, format!("{code} {}\n", usage.ru_maxrss)).expect("write the report");
}
