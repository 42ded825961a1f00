//! rpm-ostree's daemon, played on a private bus for the tests: see `berth_e2e::rpmostree_double`.
//!
//! Usage: rpm-ostree-double --address BUS --scenario normal|fail|vanish|hang --state FILE
//!        --record FILE --socket-dir DIR
//! Prints `READY` once it owns `org.projectatomic.rpmostree1`.

use std::path::PathBuf;

use berth_e2e::rpmostree_double::{serve, Options};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut get = |flag: &str| -> String {
        match args.next() {
            Some(f) if f == flag => args
                .next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value"))),
            other => usage(&format!("expected {flag}, got {other:?}")),
        }
    };
    let address = get("--address");
    let scenario = get("--scenario")
        .parse()
        .unwrap_or_else(|e: String| usage(&e));
    let state_file = PathBuf::from(get("--state"));
    let record_file = PathBuf::from(get("--record"));
    let socket_dir = PathBuf::from(get("--socket-dir"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(serve(Options {
        address,
        scenario,
        state_file,
        record_file,
        socket_dir,
    }));
    if let Err(e) = result {
        eprintln!("rpm-ostree-double: {e}");
        std::process::exit(1);
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "rpm-ostree-double: {problem}\nusage: rpm-ostree-double --address BUS --scenario \
         normal|fail|vanish|hang --state FILE --record FILE --socket-dir DIR"
    );
    std::process::exit(2)
}
