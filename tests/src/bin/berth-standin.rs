//! Stand-in for the daemons of the Fedora 21 units (etcd, kube-*, kubelet, docker) in the systemd
//! end-to-end suite: records how systemd started it, then behaves like a daemon that is up.
//!
//! Every start appends one line to `/var/log/berth-standins/<name>.args` (`<name>` is the file
//! name it was started as, e.g. `kube-controller-manager`): a JSON array of its arguments after
//! argv[0], so a test can compare them with the seed's flags. With `NOTIFY_SOCKET` set it sends
//! `READY=1` (docker.service is `Type=notify`). It then sleeps until systemd stops it.
//!
//! A start with the environment variable `BERTH_STANDIN_FAIL` set exits 1 at once, so tests can
//! make a job fail on purpose; with `BERTH_STANDIN_NO_NOTIFY` it never reports ready, so a
//! `Type=notify` start hangs until systemd's timeout.

use std::io::Write;

const LOG_DIR: &str = "/var/log/berth-standins";

fn main() {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "standin".into());
    let rest: Vec<String> = args.collect();

    let line = serde_json::to_string(&rest).expect("strings serialize");
    let path = format!("{LOG_DIR}/{name}.args");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| {
            eprintln!("{name}: cannot open {path}: {e}");
            std::process::exit(2)
        });
    // One write per line, so concurrent starts never interleave within a line.
    file.write_all(format!("{line}\n").as_bytes())
        .and_then(|_| file.sync_all())
        .unwrap_or_else(|e| {
            eprintln!("{name}: cannot write {path}: {e}");
            std::process::exit(2)
        });

    if std::env::var_os("BERTH_STANDIN_FAIL").is_some() {
        eprintln!("{name}: failing on purpose (BERTH_STANDIN_FAIL is set)");
        std::process::exit(1);
    }

    // BERTH_STANDIN_NO_NOTIFY: never report ready, so a Type=notify start hangs (job timeouts).
    if std::env::var_os("BERTH_STANDIN_NO_NOTIFY").is_none() {
        if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
            notify_ready(&socket);
        }
    }
    eprintln!("{name}: started with {line}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn notify_ready(socket: &std::ffi::OsStr) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let bytes = socket.as_bytes();
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sd_notify: {e}");
            return;
        }
    };
    let result = if bytes.first() == Some(&b'@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", std::path::Path::new(socket))
    };
    if let Err(e) = result {
        eprintln!("sd_notify: {e}");
    }
}
