//! The Kubernetes 1.20.2 binaries that `tests/setup/kubernetes.sh` builds from Debian's source
//! package: each of the seven reports v1.20.2 (the version stamps reached the vendored version
//! packages), and kubeadm decodes its own configuration types offline.
//!
//! `kubeadm config print init-defaults` round-trips the default InitConfiguration,
//! ClusterConfiguration and component configs through JSON into structs with map fields. With
//! the reflect2 1.0.1 that Kubernetes 1.20 vendors, Go >= 1.18 panics there
//! (`reflect2.(*UnsafeMapType).Key`); the build replaces it with Debian's 1.0.2, and this test
//! fails if it did not. Needs no root; the cache is read, never written.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The binaries `tests/setup/kubernetes.sh` puts in the cache's `bin/`.
const BINARIES: [&str; 7] = [
    "kubeadm",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kubemark",
    "kubectl",
];

const VERSION: &str = "v1.20.2";

/// `${BERTH_CACHE:-/var/cache/berth}/kubernetes-1.20.2/bin` when the setup script finished a
/// build there (its completion stamp exists); otherwise `None` after a loud skip, or a panic
/// under CI, where the setup runs before the suites.
fn cache_bin() -> Option<PathBuf> {
    let cache = std::env::var_os("BERTH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth"));
    let dir = cache.join("kubernetes-1.20.2");
    if dir.join(".berth-kubernetes-complete").is_file() {
        return Some(dir.join("bin"));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "kubernetes_build: no finished Kubernetes build in {}; CI runs tests/setup/kubernetes.sh first",
        dir.display()
    );
    eprintln!(
        "\n*** SKIPPED kubernetes_build: no Kubernetes build in {} (run tests/setup/kubernetes.sh) ***\n",
        dir.display()
    );
    None
}

/// Runs `bin/NAME ARGS` with an empty HOME (no kubeconfig of the user's is read) and returns its
/// output; panics with its stderr unless it exits 0.
fn run(bin: &std::path::Path, name: &str, args: &[&str], home: &std::path::Path) -> Output {
    let path = bin.join(name);
    let out = Command::new(&path)
        .args(args)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| panic!("{} cannot run: {e}", path.display()));
    assert!(
        out.status.success(),
        "{name} {args:?} exited with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The version line each binary prints, and how to ask for it.
fn version_args(name: &str) -> &'static [&'static str] {
    match name {
        "kubeadm" => &["version", "-o", "short"],
        "kubectl" => &["version", "--client", "--short"],
        _ => &["--version"],
    }
}

#[test]
fn every_binary_reports_v1_20_2() {
    let Some(bin) = cache_bin() else { return };
    let home = tempfile::tempdir().unwrap();
    for name in BINARIES {
        let out = run(&bin, name, version_args(name), home.path());
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next().unwrap_or("").trim();
        // "v1.20.2" (kubeadm), "Kubernetes v1.20.2", "Client Version: v1.20.2" (kubectl).
        let reported = line.rsplit(' ').next().unwrap_or("");
        assert_eq!(
            reported, VERSION,
            "{name} reports {line:?}, not {VERSION} (version stamps missing from the build?)"
        );
    }
}

#[test]
fn kubeadm_prints_its_default_configuration() {
    let Some(bin) = cache_bin() else { return };
    let home = tempfile::tempdir().unwrap();
    let out = run(
        &bin,
        "kubeadm",
        &[
            "config",
            "print",
            "init-defaults",
            "--component-configs",
            "KubeletConfiguration,KubeProxyConfiguration",
            "--kubeconfig",
            "/dev/null",
        ],
        home.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    for kind in [
        "InitConfiguration",
        "ClusterConfiguration",
        "KubeletConfiguration",
        "KubeProxyConfiguration",
    ] {
        assert!(
            kinds.contains(&kind),
            "kubeadm config print init-defaults printed no {kind} (kinds: {kinds:?}):\n{text}"
        );
    }
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("kubernetesVersion: "))
        .unwrap_or_else(|| panic!("no kubernetesVersion in the ClusterConfiguration:\n{text}"));
    assert!(
        version.starts_with("v1."),
        "kubernetesVersion {version:?} is no Kubernetes 1.x version"
    );
}
