//! berth's etcd client and certificates against a real etcd 3.4 (Debian's etcd-server) on
//! loopback: TLS with client certificates from the cluster CA, the JSON gateway's member, status,
//! key and snapshot calls, and a learner added, refused a second time, and removed.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_agent::etcd::client::{ClientTls, EtcdClient};
use berth_agent::etcd::pki::{leaves, ClusterCa};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn the_client_speaks_to_a_real_etcd_over_tls_with_the_cluster_ca() {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd is missing under CI: tests/setup/etcd.sh installs it"
        );
        eprintln!("\n*** SKIPPED: no etcd binary (run tests/setup/etcd.sh) ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("test").unwrap();
    let ls = leaves("i-0123456789abcdef0", Ipv4Addr::LOCALHOST);
    let mut files = std::collections::BTreeMap::new();
    for leaf in &ls {
        let (c, k) = ca.issue(leaf).unwrap();
        files.insert(leaf.file, (c, k));
    }
    let ca_path = write(dir.path(), "ca.crt", &ca.cert);
    let srv_c = write(dir.path(), "server.crt", &files["server"].0);
    let srv_k = write(dir.path(), "server.key", &files["server"].1);
    let (cport, pport) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{cport}");
    let peer_url = format!("https://127.0.0.1:{pport}");
    let data = dir.path().join("data");
    let child = Command::new("etcd")
        .arg("--name=i-0123456789abcdef0")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=i-0123456789abcdef0={peer_url}"))
        .arg(format!("--cert-file={srv_c}"))
        .arg(format!("--key-file={srv_k}"))
        .arg(format!("--trusted-ca-file={ca_path}"))
        .arg("--client-cert-auth")
        .arg(format!("--peer-cert-file={srv_c}"))
        .arg(format!("--peer-key-file={srv_k}"))
        .arg(format!("--peer-trusted-ca-file={ca_path}"))
        .arg("--peer-client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let _etcd = Etcd(child);
    let (cc, ck) = &files["client"];
    let client = EtcdClient::new(&ClientTls {
        ca_pem: &ca.cert,
        cert_pem: cc,
        key_pem: ck,
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match client.status(&client_url).await {
            Ok(s) if s.leader != 0 => break s,
            other => {
                assert!(Instant::now() < deadline, "etcd never answered: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(status.leader, status.member_id);
    let (cluster_id, members) = client.members(&client_url).await.unwrap();
    assert_eq!(cluster_id, status.cluster_id);
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "i-0123456789abcdef0");
    assert_eq!(members[0].peer_urls, vec![peer_url.clone()]);

    client
        .put(&client_url, "/berth/test", b"kept")
        .await
        .unwrap();
    assert_eq!(
        client.get(&client_url, "/berth/test").await.unwrap(),
        Some(b"kept".to_vec())
    );
    assert_eq!(
        client.get(&client_url, "/berth/absent").await.unwrap(),
        None
    );

    // A learner: added (never started), a second refused by etcd 3.4, then removed.
    let (id, after) = client
        .add_learner(&client_url, "https://127.0.0.2:2380")
        .await
        .unwrap();
    assert_eq!(after.len(), 2);
    let learner = after.iter().find(|m| m.id == id).unwrap();
    assert!(learner.is_learner && learner.name.is_empty());
    let second = client
        .add_learner(&client_url, "https://127.0.0.3:2380")
        .await
        .unwrap_err();
    assert!(second.message().contains("too many learner"), "{second}");
    client.remove(&client_url, id).await.unwrap();
    let gone = client.remove(&client_url, id).await.unwrap_err();
    assert!(gone.message().contains("member not found"), "{gone}");

    // A snapshot as etcdctl saves it: etcdctl's own status check reads it.
    let snap = dir.path().join("s.db");
    let mut f = std::fs::File::create(&snap).unwrap();
    let n = client
        .snapshot(&client_url, &mut f, Duration::from_secs(30))
        .await
        .unwrap();
    drop(f);
    assert!(n > 0);
    assert_eq!(std::fs::metadata(&snap).unwrap().len(), n);
    let out = Command::new("etcdctl")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&snap)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "etcdctl rejects the snapshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client without the cluster's certificate is refused by etcd.
    let other = ClusterCa::generate("other").unwrap();
    let (oc, ok) = other.issue(&ls[2]).unwrap();
    let stranger = EtcdClient::new(&ClientTls {
        ca_pem: &ca.cert,
        cert_pem: &oc,
        key_pem: &ok,
    })
    .unwrap();
    assert!(stranger.status(&client_url).await.is_err());
}
