//! A private, real message bus: `dbus-daemon` with a configuration of its own and its own socket,
//! so tests never touch the machine's system bus and run in parallel without seeing each other.
//! The daemon is stopped by its PID when the [`PrivateBus`] is dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct PrivateBus {
    dir: tempfile::TempDir,
    daemon: Child,
    address: String,
}

impl PrivateBus {
    /// Start `dbus-daemon` and return once it listens (it prints its address when ready).
    pub fn start() -> PrivateBus {
        let dir = bus_dir();
        let listen = format!("unix:path={}", dir.path().join("bus.sock").display());
        PrivateBus::spawn(dir, Command::new("dbus-daemon"), &listen)
    }

    /// `dbus-daemon` run by `launcher` (for example `nsenter` into a container's network
    /// namespace, where an abstract socket lives), listening on `listen`.
    pub fn start_with(launcher: Command, listen: &str) -> PrivateBus {
        PrivateBus::spawn(bus_dir(), launcher, listen)
    }

    fn spawn(dir: tempfile::TempDir, mut cmd: Command, listen: &str) -> PrivateBus {
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, bus_config(listen)).expect("write the bus configuration");
        let mut daemon = cmd
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its complaints (it cannot raise its fd limit in a sandbox) go to a file, not the
            // test output.
            .stderr(std::fs::File::create(dir.path().join("dbus-daemon.log")).expect("log file"))
            .spawn()
            .expect("start dbus-daemon (apt-get install dbus)");
        let mut line = String::new();
        BufReader::new(daemon.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read dbus-daemon's address");
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon did not start: printed {line:?}"
        );
        PrivateBus {
            dir,
            daemon,
            address,
        }
    }

    /// The bus address (`unix:path=...,guid=...`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Kill the daemon now (SIGKILL, by its PID) and wait for it: every connection breaks at
    /// once, as when a shutdown stops the bus.
    pub fn kill(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }

    /// A directory that lives as long as the bus, for the test's other files.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

fn bus_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-bus-")
        .tempdir()
        .expect("temporary directory")
}

/// The bus's configuration: everyone may own any name and talk to anyone, since the bus is the
/// test's alone. EXTERNAL authentication (the peer's uid over SO_PEERCRED) is what the system
/// bus uses too.
fn bus_config(listen: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>berth-test</type>
  <listen>{listen}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"#
    )
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
