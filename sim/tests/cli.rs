//! `berth-sim serve` as the QEMU test and Vagrant run it: fixed IMDS port, endpoints on stdout,
//! clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the server by its PID if the test ends early.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_prints_endpoints_and_stops_on_sigterm() {
    let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/clusters/seed.yaml");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_berth-sim"))
        .args(["serve", "--cluster", cluster, "--imds-listen"])
        .arg(format!("fed-minion=127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let mut lines = BufReader::new(guard.0.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let line = lines.next().expect("a line per instance").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(v);
    }
    assert_eq!(seen[0]["name"], "fed-master");
    assert_eq!(seen[1]["name"], "fed-minion");
    assert_eq!(seen[1]["imds"], format!("http://127.0.0.1:{port}/"));
    assert_eq!(seen[1]["instance_id"], "i-0a1b2c3d4e5f60002");
    assert_eq!(seen[1]["private_ip"], "172.30.0.43");
    assert!(seen[0]["ec2"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));

    let reply = http(
        port,
        "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n",
    );
    let token = reply.split("\r\n\r\n").nth(1).unwrap().to_string();
    let reply = http(
        port,
        &format!("GET /latest/meta-data/local-ipv4 HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n172.30.0.43"), "{reply}");

    // SAFETY: kill(2) on the PID of the child this test spawned and still owns.
    let rc = unsafe { libc_kill(guard.0.id() as i32, 15) };
    assert_eq!(rc, 0);
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn serve_rejects_a_bad_cluster_file_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("berth-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "instances:\n  - name: a\n    state: asleep\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth-sim"))
        .args(["serve", "--cluster"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("instances[0].state"), "{stderr}");
    assert!(stderr.contains("bad.yaml"), "{stderr}");
}
