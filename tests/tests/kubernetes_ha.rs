//! The `kubeadm` profile's Kubernetes tier against real Kubernetes 1.20 (built from Debian's
//! source) and real etcd 3.4: masters and minions are booted containers with real systemd on
//! one LAN, the agent runs inside each, and the cluster is judged from outside with `kubectl`
//! through each master's API server. Minions' node agent is the real kubelet over Debian's
//! containerd, runc and CNI plugins (see `tests/src/kube.rs`).
//!
//! Root only (network namespaces, systemd-nspawn); skipped loudly without root, never under CI.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use berth_e2e::ha::describe;
use berth_e2e::kube::{Kube, N, TICKET_PARAMETER};
use berth_e2e::nspawn::have_root;

/// No token's secret half in anything an agent printed through the harness (every run,
/// status and plan), in any node's `/var/lib/berth` (state, last run) or `/etc/kubernetes`
/// (kubeadm's files, berth's configuration), or in a scratch directory under `/run`.
fn assert_no_token(k: &Kube, tokens: &[String]) {
    let printed = k.printed.lock().unwrap();
    assert!(!printed.is_empty());
    for token in tokens {
        let secret = token.split('.').nth(1).expect("a token has two halves");
        for text in printed.iter() {
            assert!(
                !text.contains(secret),
                "a token's secret in an output:\n{text}"
            );
        }
        for m in k.ha.masters.iter().chain(&k.minions) {
            for dir in ["/var/lib/berth", "/etc/kubernetes", "/run"] {
                for entry in walk(&m.ct.path(dir)) {
                    let bytes = std::fs::read(&entry).unwrap_or_default();
                    assert!(
                        !String::from_utf8_lossy(&bytes).contains(secret),
                        "a token's secret in {}",
                        entry.display()
                    );
                }
            }
        }
    }
    eprintln!(
        "no secret of {} token(s) in {} outputs or any node's files",
        tokens.len(),
        printed.len()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_symlink() {
                continue;
            }
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn ticket(k: &Kube) -> serde_json::Value {
    let (json, _) =
        k.ha.region
            .sim()
            .parameter(TICKET_PARAMETER)
            .expect("the masters published a join ticket");
    serde_json::from_str(&json).unwrap()
}

#[test]
fn three_masters_and_two_minions_form_a_cluster_that_survives_a_master() {
    if !have_root("three_masters_and_two_minions_form_a_cluster_that_survives_a_master") {
        return;
    }
    let mut k = Kube::new("kha", 3600);
    let all = k.launch(3, 2);
    k.converge_until_ready(&all, 12);

    let minions: Vec<String> = k.minions.iter().map(|m| m.instance_id.clone()).collect();
    for via in 0..3 {
        let took = k
            .wait_ready(via, &minions, Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("every minion Ready through master {via} after {took:?}");
    }
    let t = ticket(&k);
    let token = t["token"].as_str().unwrap().to_string();
    let status = k.status(N::M(0));
    assert!(
        status.contains("API endpoint: api.berth.internal:6443"),
        "{status}"
    );
    assert!(
        status.contains("this master's API server: ready"),
        "{status}"
    );
    let plan = k.plan(N::W(0));
    assert!(plan.status.success(), "{}", describe(&plan));
    // The minion's next run asks the API for its Node with the kubelet's credentials.
    k.converge_until_ready(&[N::W(0)], 2);
    let wstatus = k.status(N::W(0));
    assert!(
        wstatus.contains("node: joined, registered, Ready=True"),
        "{wstatus}"
    );
    let wplan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        wplan.contains("API endpoint: api.berth.internal:6443"),
        "{wplan}"
    );
    let mut tokens = vec![token.clone()];
    let duties: Vec<usize> = (0..3)
        .filter(|i| k.status(N::M(*i)).contains("cluster duties: this master"))
        .collect();
    assert_eq!(
        duties.len(),
        1,
        "exactly one master carries the cluster duties: {duties:?}"
    );
    let dstatus = k.status(N::M(duties[0]));
    let expires = t["expires"].as_u64().unwrap();
    assert!(
        dstatus.contains(&format!("join token expires: {expires} (Unix s, in ")),
        "{dstatus}"
    );

    // A wrong CA pin: a late minion reads a ticket whose pin is not the cluster CA's, and
    // kubeadm's discovery refuses the API server; the node never registers.
    let mut wrong = t.clone();
    wrong["ca_cert_hash"] = format!("sha256:{}", "0".repeat(64)).into();
    k.ha.region
        .sim()
        .put_parameter(TICKET_PARAMETER, &wrong.to_string(), true);
    let late = k.launch(0, 1)[0];
    let out = k.converge(late);
    assert_eq!(
        out.status.code(),
        Some(4),
        "exit 4: the cluster refused; {}",
        describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pinned"),
        "kubeadm's refusal of the pin: {}",
        describe(&out)
    );
    assert!(!k
        .node(late)
        .ct
        .path("/etc/kubernetes/kubelet.conf")
        .exists());
    let late_id = k.node(late).instance_id.clone();
    assert!(
        !k.nodes(1).unwrap().iter().any(|(n, _)| *n == late_id),
        "a node joined with a wrong pin"
    );

    // The etcd leader's master sees the pin is not its CA's and publishes a fresh ticket; the
    // late minion then joins on its own.
    k.converge_until_ready(&[N::M(0), N::M(1), N::M(2)], 3);
    let fixed = ticket(&k);
    tokens.push(fixed["token"].as_str().unwrap().to_string());
    assert_eq!(fixed["ca_cert_hash"], t["ca_cert_hash"]);
    k.converge_until_ready(&[late], 3);
    let mut want = minions.clone();
    want.push(late_id.clone());
    let took = k
        .wait_ready(1, &want, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("the late minion Ready {took:?} after its join");

    // An expired token is never used: a minion that reads one waits (exit 6), and kubeadm
    // never ran (no bootstrap kubeconfig, no certificate request of its node).
    let mut expired = fixed.clone();
    expired["expires"] = (berth_agent::state::now_secs() - 1).into();
    k.ha.region
        .sim()
        .put_parameter(TICKET_PARAMETER, &expired.to_string(), true);
    let w4 = k.launch(0, 1)[0];
    let out = k.converge(w4);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("it is not used"),
        "{}",
        describe(&out)
    );
    let w4_ct = &k.node(w4).ct;
    assert!(!w4_ct
        .path("/etc/kubernetes/bootstrap-kubelet.conf")
        .exists());
    assert!(!w4_ct.path("/etc/kubernetes/kubelet.conf").exists());
    let w4_status = k.status(w4);
    assert!(w4_status.contains("kubernetes: waiting"), "{w4_status}");
    assert!(
        w4_status.contains("s ago)"),
        "the expiry, in the past: {w4_status}"
    );
    k.converge_until_ready(&[N::M(0), N::M(1), N::M(2)], 3);
    let rotated = ticket(&k);
    tokens.push(rotated["token"].as_str().unwrap().to_string());
    assert_ne!(
        rotated["token"], fixed["token"],
        "an expired ticket is replaced"
    );
    assert!(rotated["expires"].as_u64().unwrap() > berth_agent::state::now_secs() + 1800);
    k.converge_until_ready(&[w4], 3);
    let w4_id = k.node(w4).instance_id.clone();
    want.push(w4_id);
    k.wait_ready(1, &want, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}"));

    // A terminated minion's Node is deleted by the control plane.
    k.terminate(N::W(1));
    k.converge_until_ready(&[N::M(0), N::M(1), N::M(2)], 3);
    want.retain(|n| *n != minions[1]);
    let names: Vec<String> = k.nodes(1).unwrap().into_iter().map(|(n, _)| n).collect();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(
        names, sorted,
        "the terminated minion's Node is gone, the others stay"
    );

    // A shared key's parameter lost: the owner master stores its own copy again, never a new
    // CA; every master keeps serving.
    let ca_param = "/berth/ha/master/kubernetes-ca";
    let (ca_before, _) = k.ha.region.sim().parameter(ca_param).unwrap();
    assert!(k.ha.region.sim().delete_parameter(ca_param));
    k.converge_until_ready(&[N::M(0), N::M(1), N::M(2)], 4);
    let (ca_after, _) = k.ha.region.sim().parameter(ca_param).expect("stored again");
    assert_eq!(ca_after, ca_before, "the same CA, stored again");

    // The master whose controller-manager leads is terminated: the API still answers through
    // the others, and the lease moves to another master.
    let takers = k.lease_takers("kube-controller-manager");
    assert_eq!(
        takers.len(),
        1,
        "one controller-manager took the lease: {takers:?}"
    );
    let leader = takers[0];
    let before = k
        .lease_holder((leader + 1) % 3, "kube-controller-manager")
        .unwrap();
    k.terminate(N::M(leader));
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // etcd may elect a new leader (the lost master's member may have led): a few seconds.
    for via in &others {
        let answered = berth_e2e::kube::wait_for(Duration::from_secs(30), || k.nodes(*via));
        if answered.is_none() {
            let o = k.kubectl(*via, &["get", "nodes"]);
            panic!(
                "the API does not answer through master {via}: {}",
                describe(&o)
            );
        }
    }
    let moved = berth_e2e::kube::wait_for(Duration::from_secs(120), || {
        k.lease_holder(others[0], "kube-controller-manager")
            .filter(|h| *h != before)
    });
    let after = moved.expect("the controller-manager lease moved to another master");
    let new_takers = k.lease_takers("kube-controller-manager");
    assert!(
        new_takers
            .iter()
            .any(|i| *i != leader && others.contains(i)),
        "another master's controller-manager took the lease ({before} -> {after}): {new_takers:?}"
    );
    // The survivors converge (the dead etcd member removed); minions re-point the API name at
    // a live master and stay Ready.
    let survivors: Vec<N> = others.iter().map(|i| N::M(*i)).collect();
    k.converge_until_ready(&survivors, 6);
    let alive_minions: Vec<N> = vec![N::W(0), late, w4];
    k.converge_until_ready(&alive_minions, 3);
    for n in &alive_minions {
        let hosts = std::fs::read_to_string(k.node(*n).ct.path("/etc/hosts")).unwrap();
        let dead_ip = k.ha.masters[leader].ip.to_string();
        assert!(
            !hosts.contains(&format!("{dead_ip} api.berth.internal")),
            "{n:?} still sends the API name to the dead master:\n{hosts}"
        );
    }
    k.wait_ready(others[1], &want, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("after a master was lost: {e}"));
    // Revocation: the token deleted from the API; the duty holder publishes a new one at its
    // next run, though the old ticket had most of its TTL left. (If the lost master held the
    // duties, its lease expires first: up to 90 s.)
    let before = ticket(&k);
    let id = before["token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let o = k.kubectl(
        others[0],
        &[
            "delete",
            "secret",
            "-n",
            "kube-system",
            &format!("bootstrap-token-{id}"),
        ],
    );
    assert!(o.status.success(), "{}", describe(&o));
    let after = berth_e2e::kube::wait_for(Duration::from_secs(150), || {
        k.converge_until_ready(&survivors, 3);
        let t = ticket(&k);
        (t["token"] != before["token"]).then_some(t)
    })
    .expect("a revoked token is replaced");
    tokens.push(after["token"].as_str().unwrap().to_string());
    assert_no_token(&k, &tokens);
}

/// Puts master 0 back to before its Kubernetes tier ran, keeping its etcd member: control-plane
/// units stopped and removed, `/etc/kubernetes` gone, Kubernetes' keys in etcd and the tier's
/// parameters deleted.
fn reset_kube_tier(k: &mut Kube) {
    let ct = &k.ha.masters[0].ct;
    let out = ct.exec(&[
        "sh",
        "-c",
        "systemctl disable --now kube-apiserver kube-controller-manager kube-scheduler 2>/dev/null; \
         rm -f /etc/systemd/system/kube-*.service; systemctl daemon-reload; \
         systemctl reset-failed; rm -rf /etc/kubernetes",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let eps = k.ha.endpoints(&[0]);
    for prefix in ["/registry", "/berth/kubernetes"] {
        let o = k.ha.etcdctl(&eps, &["del", "--prefix", prefix]);
        assert!(o.status.success(), "{}", describe(&o));
    }
    for name in [
        "/berth/ha/master/kubernetes-ca",
        "/berth/ha/master/kubernetes-sa",
        "/berth/ha/master/kubernetes-front-proxy-ca",
        TICKET_PARAMETER,
    ] {
        k.ha.region.sim().delete_parameter(name);
    }
}

/// A master's Kubernetes tier killed (SIGKILL, as a power cut) after each of its steps in turn,
/// from the same start each time (the etcd member kept; its own crash safety is `etcd_ha.rs`'s),
/// and the next run converging every time: exit 0, the API ready, exactly one cluster CA (the
/// one on disk is the stored one), no scratch directory left (it may hold a key or the token).
/// Then a minion joins and is Ready.
#[test]
fn a_master_killed_after_each_step_of_its_kubernetes_tier_converges() {
    if !have_root("a_master_killed_after_each_step_of_its_kubernetes_tier_converges") {
        return;
    }
    let mut k = Kube::new("kcrash", 3600);
    k.launch(1, 1);
    k.converge_until_ready(&[N::M(0)], 3);
    let mut hit = Vec::new();
    for n in 1.. {
        reset_kube_tier(&mut k);
        let out = k.converge_with(N::M(0), &[("BERTH_CRASH_AT", &n.to_string())]);
        if out.status.success() {
            break;
        }
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "step {n}: {}",
            describe(&out)
        );
        let marker = format!("BERTH_CRASH_AT={n}: aborting after ");
        let what = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| l.split_once(&marker).map(|(_, w)| w.to_string()))
            .unwrap_or_else(|| panic!("step {n} not reached: {}", describe(&out)));
        let next = k.converge(N::M(0));
        assert!(
            next.status.success(),
            "after a kill at step {n} ({what}): {}",
            describe(&next)
        );
        let ct = &k.node(N::M(0)).ct;
        let on_disk = std::fs::read_to_string(ct.path("/etc/kubernetes/pki/ca.crt")).unwrap();
        let (stored, _) =
            k.ha.region
                .sim()
                .parameter("/berth/ha/master/kubernetes-ca")
                .expect("the CA is stored");
        let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(
            stored["public"].as_str(),
            Some(on_disk.as_str()),
            "after step {n} ({what})"
        );
        for dir in ["/etc/kubernetes", "/run"] {
            let left: Vec<String> = std::fs::read_dir(ct.path(dir))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".berth-kubeadm-"))
                .collect();
            assert!(
                left.is_empty(),
                "after step {n} ({what}): scratch left in {dir}: {left:?}"
            );
        }
        ticket(&k);
        hit.push(what);
        assert!(n < 40, "more than 40 steps: {hit:?}");
    }
    eprintln!("killed after each of {} steps: {hit:?}", hit.len());
    for needed in [
        "kubernetes shared keys owner",
        "kubernetes shared keys stored",
        "unit kube-apiserver.service",
        "kubernetes bootstrap token",
        "kubernetes join ticket",
    ] {
        assert!(
            hit.iter().any(|s| s == needed),
            "no run was killed after `{needed}`: {hit:?}"
        );
    }
    k.converge_until_ready(&[N::W(0)], 6);
    let minion = vec![k.minions[0].instance_id.clone()];
    k.wait_ready(0, &minion, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A minion's kubelet (the real one, over Debian's containerd, runc and CNI plugins) made a Ready
/// Node by the agent's `kubeadm join`, and a pod from a locally built image, placed there by the
/// scheduler, answering over HTTP at its pod address, as the seed's Apache pod did.
#[test]
fn a_pod_from_a_local_image_runs_on_a_joined_minion_and_answers_http() {
    if !have_root("a_pod_from_a_local_image_runs_on_a_joined_minion_and_answers_http") {
        return;
    }
    let mut k = Kube::new("krk", 3600);
    let all = k.launch(1, 1);
    let started = std::time::Instant::now();
    k.converge_until_ready(&all, 12);
    eprintln!("agents converged after {:?}", started.elapsed());
    let node = k.minions[0].instance_id.clone();
    let took = k
        .wait_ready(0, std::slice::from_ref(&node), Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("{e}\n{}", journal(&k, "kubelet")));
    eprintln!(
        "the minion's Node Ready {took:?} after the agents converged ({:?} after the first \
         agent run)",
        started.elapsed()
    );
    let version = k.kubectl(
        0,
        &[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.nodeInfo.containerRuntimeVersion} {.status.nodeInfo.kubeletVersion}",
        ],
    );
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.starts_with("containerd://") && version.ends_with("v1.20.2"),
        "the Node is the real kubelet's, over containerd: {version}"
    );
    k.converge_until_ready(&[N::W(0)], 2);
    let status = k.status(N::W(0));
    assert!(
        status.contains("node: joined, registered, Ready=True"),
        "{status}"
    );

    // A pod of the local image, bound by the scheduler (masters are not Nodes: the minion is the
    // only place it can go, and nothing but the scheduler sets `spec.nodeName`).
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("web.json");
    std::fs::write(
        &manifest,
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "httpd",
                    "image": "localhost/httpd:local",
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080}]
                }]
            }
        })
        .to_string(),
    )
    .unwrap();
    let manifest = manifest.to_string_lossy().into_owned();
    // The default ServiceAccount, which admission looks up, appears once the controller-manager
    // ran its first sync.
    let created = berth_e2e::kube::wait_for(Duration::from_secs(60), || {
        let o = k.kubectl(0, &["apply", "-f", &manifest]);
        o.status.success().then_some(())
    });
    assert!(created.is_some(), "the pod could not be created");
    let pod_created = std::time::Instant::now();
    let ip = berth_e2e::kube::wait_for(Duration::from_secs(180), || {
        let o = k.kubectl(
            0,
            &[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.status.phase} {.spec.nodeName} {.status.podIP}",
            ],
        );
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let f: Vec<&str> = out.split_whitespace().collect();
        (f.len() == 3 && f[0] == "Running").then(|| {
            assert_eq!(f[1], node, "the scheduler placed the pod on the minion");
            f[2].to_string()
        })
    })
    .unwrap_or_else(|| {
        let o = k.kubectl(0, &["describe", "pod", "web"]);
        panic!(
            "the pod did not run:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            journal(&k, "kubelet")
        )
    });
    eprintln!(
        "pod Running at {ip} {:?} after it was created",
        pod_created.elapsed()
    );
    let url = format!("http://{ip}:8080/");
    let page = berth_e2e::kube::wait_for(Duration::from_secs(30), || {
        let o = k.minions[0]
            .ct
            .in_netns(std::path::Path::new("/usr/bin/curl"))
            .args(["-sS", "--max-time", "5", &url])
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    });
    assert_eq!(
        page.as_deref(),
        Some("berth pod\n"),
        "the pod answers over HTTP at {url}"
    );
    eprintln!("GET {url} -> {:?}", page.unwrap().trim());
}

/// The last lines of `unit`'s journal on every minion, for a failure message.
fn journal(k: &Kube, unit: &str) -> String {
    k.minions
        .iter()
        .filter(|m| m.ct.is_booted())
        .map(|m| {
            let o = m.ct.exec(&[
                "journalctl",
                "--no-pager",
                "-n",
                "60",
                "-u",
                &format!("{unit}.service"),
            ]);
            format!(
                "{} {unit}:\n{}",
                m.instance_id,
                String::from_utf8_lossy(&o.stdout)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
