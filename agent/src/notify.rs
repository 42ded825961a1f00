//! sd_notify(3): readiness and a status line for `systemctl status`, without libsystemd.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1\nSTATUS=converged`) to `$NOTIFY_SOCKET`, when systemd set one.
/// Failures are logged and otherwise ignored: notification is a courtesy to the service manager,
/// never a reason to stop converging.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = result {
        log::debug!("sd_notify to {}: {e}", path.to_string_lossy());
    }
}

/// `STATUS=...` alone.
pub fn status(line: &str) {
    notify(&format!("STATUS={}", line.replace('\n', " ")));
}
