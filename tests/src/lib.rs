//! The end-to-end harness: the real binaries against berth-sim, moto, systemd in a container,
//! and libostree, each started and stopped (by PID) by the test that needs it.

pub mod agent;
pub mod agent_host;
pub mod dbus;
pub mod fresh;
pub mod ha;
pub mod hostile;
pub mod kube;
pub mod lan;
pub mod moto;
pub mod nspawn;
pub mod qemu;
pub mod rpmostree_double;

/// Whether a test that needs root, and `program` installed by `setup` (a script in
/// tests/setup/), can run here. Otherwise it skips with a loud message when `CI` is unset, and
/// fails under CI: CI runs as root after every setup script, so a skip there would hide a bug.
pub fn can_run(test: &str, program: &str, setup: &str) -> bool {
    let ci = std::env::var_os("CI").is_some();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !ci,
            "{test}: CI runs as root; this test must not skip there"
        );
        eprintln!("\n*** SKIPPED {test}: needs root; run the suite as root ***\n");
        return false;
    }
    if std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!ci, "{test}: tests/setup/{setup} installs {program} in CI");
        eprintln!("\n*** SKIPPED {test}: no {program} (run tests/setup/{setup}) ***\n");
        return false;
    }
    true
}
