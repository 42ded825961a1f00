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
        let dir = tempfile::Builder::new()
            .prefix("berth-bus-")
            .tempdir()
            .expect("temporary directory");
        let socket = dir.path().join("bus.sock");
        let config = dir.path().join("bus.conf");
        // Everyone may own any name and talk to anyone: the bus is the test's alone. EXTERNAL
        // authentication (the peer's uid over SO_PEERCRED) is what the system bus uses too.
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>berth-test</type>
  <listen>unix:path={}</listen>
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
"#,
                socket.display()
            ),
        )
        .expect("write the bus configuration");
        let mut daemon = Command::new("dbus-daemon")
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

    /// A directory that lives as long as the bus, for the test's other files.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
