//! sd_notify(3): readiness and a status line for `systemctl status`, without libsystemd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A datagram socket connected to `$NOTIFY_SOCKET`, when systemd set one.
fn connect() -> Option<std::io::Result<UnixDatagram>> {
    std::env::var_os("NOTIFY_SOCKET").map(|p| connect_to(&p))
}

/// `path` as in `$NOTIFY_SOCKET`: a file system path, or `@name` for an abstract socket.
fn connect_to(path: &std::ffi::OsStr) -> std::io::Result<UnixDatagram> {
    UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.connect_addr(&addr)?;
        } else {
            sock.connect(path)?;
        }
        Ok(sock)
    })
}

/// Sends `state` (e.g. `READY=1\nSTATUS=converged`) to `$NOTIFY_SOCKET`, when systemd set one.
/// Failures are logged and otherwise ignored: notification is a courtesy to the service manager,
/// never a reason to stop converging.
pub fn notify(state: &str) {
    let result = match connect() {
        None => return,
        Some(sock) => sock.and_then(|s| s.send(state.as_bytes())),
    };
    if let Err(e) = result {
        log::debug!("sd_notify: {e}");
    }
}

/// `STATUS=...` alone.
pub fn status(line: &str) {
    notify(&format!("STATUS={}", line.replace('\n', " ")));
}

/// Waits until systemd has processed every notification sent before (sd_notify_barrier(3)):
/// `BARRIER=1` carries the write end of a pipe, which systemd closes once it has read everything
/// queued ahead of it. For a notification that must land before an action whose effects systemd
/// sees through another channel: READY=1 before asking logind to reboot, so that the unit's start
/// job completes instead of being cancelled by the shutdown.
///
/// Returns whether systemd confirmed within `timeout`; false without `$NOTIFY_SOCKET`, or from a
/// service manager without barrier support (systemd < 246 closes the descriptor unread, which
/// also ends the wait).
pub(crate) fn barrier(timeout: Duration) -> bool {
    match connect() {
        None => false,
        Some(sock) => barrier_on(sock, timeout),
    }
}

fn barrier_on(sock: std::io::Result<UnixDatagram>, timeout: Duration) -> bool {
    match sock.and_then(|s| send_barrier(&s, timeout)) {
        Ok(confirmed) => confirmed,
        Err(e) => {
            log::debug!("sd_notify barrier: {e}");
            false
        }
    }
}

fn send_barrier(sock: &UnixDatagram, timeout: Duration) -> std::io::Result<bool> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    let payload = b"BARRIER=1";
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let fd_len = std::mem::size_of::<libc::c_int>() as u32;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid empty message; the fields set below point at `iov`
    // and `control`, which outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` bytes, enough for one cmsghdr with one descriptor,
    // so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for the descriptor.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_len) as _;
        std::ptr::write_unaligned(
            libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
            write.as_raw_fd(),
        );
    }
    // SAFETY: the socket is connected, and msg describes valid buffers (see above).
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Only systemd's copy of the write end may remain: its close is the signal.
    drop(write);

    let mut pfd = libc::pollfd {
        fd: read.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n > 0 && pfd.revents & libc::POLLHUP != 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A stand-in for systemd's notify socket that reads one datagram with its descriptors.
    fn recv_with_fds(sock: &UnixDatagram) -> (String, Vec<OwnedFd>) {
        let mut buf = [0u8; 256];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        // SAFETY: as in send_barrier; the buffers outlive recvmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: a valid socket and message.
        let n = unsafe { libc::recvmsg(sock.as_fd().as_raw_fd(), &mut msg, 0) };
        assert!(n >= 0, "{}", std::io::Error::last_os_error());
        let mut fds = Vec::new();
        // SAFETY: walking the control messages recvmsg filled in.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        (
            String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
            fds,
        )
    }

    #[test]
    fn barrier_waits_for_the_manager_to_close_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let socket = path.clone().into_os_string();

        connect_to(&socket)
            .unwrap()
            .send(b"READY=1\nSTATUS=rebooting")
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let confirmed = barrier_on(connect_to(&socket), Duration::from_secs(30));
            tx.send(()).unwrap();
            confirmed
        });
        let (first, fds) = recv_with_fds(&manager);
        assert_eq!(first, "READY=1\nSTATUS=rebooting");
        assert!(fds.is_empty());
        let (second, fds) = recv_with_fds(&manager);
        assert_eq!(second, "BARRIER=1");
        assert_eq!(fds.len(), 1, "the barrier carries one descriptor");
        // Holding the descriptor holds the barrier.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(fds);
        assert!(
            waiter.join().unwrap(),
            "the barrier ends when the manager closes it"
        );

        // A manager that never answers: the wait is bounded.
        let held = std::thread::spawn(move || recv_with_fds(&manager));
        assert!(!barrier_on(
            connect_to(path.as_os_str()),
            Duration::from_millis(100)
        ));
        drop(held.join().unwrap());
    }
}
