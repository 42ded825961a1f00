//! Running the real `berth-agent` binary against a `berth-sim` region, each node in its own
//! `--root` directory laid out like a Fedora Atomic 21 host.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, PoisonError};

use berth_sim::{ClusterSpec, Sim};

/// The workspace's top directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The binary of the workspace package `name` (each names its one binary after itself), built
/// once per test process so that a test never runs a stale copy (`cargo test -p berth-e2e`
/// alone does not build other packages' binaries).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    {
        // Held across the build: a second test asking for the same binary waits for it.
        let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
        if !built.contains(name) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", name, "--bin", name])
                .current_dir(workspace())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building {name} failed");
            built.insert(name.to_string());
        }
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>; a binary of this crate (a bench)
    // sits in target/<profile>/ itself.
    let parent = exe.parent().expect("target dir");
    let dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().expect("target dir")
    } else {
        parent
    };
    let p = dir.join(name);
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// A host root like a fresh Fedora Atomic 21 instance: the shipped kubelet unit (with its
/// `docker.socket` dependency) and an `/etc/hosts` of its own.
pub fn fedora_root() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let units = d.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::copy(
        workspace().join("tests/fixtures/fedora-21/units/kubelet.service"),
        units.join("kubelet.service"),
    )
    .unwrap();
    std::fs::create_dir_all(d.path().join("etc")).unwrap();
    std::fs::write(
        d.path().join("etc/hosts"),
        "127.0.0.1   localhost localhost.localdomain\n::1         localhost6 localhost6.localdomain6\n",
    )
    .unwrap();
    d
}

/// A region running on its own runtime threads, so that tests can call blocking commands.
pub struct Region {
    pub sim: Sim,
    pub rt: tokio::runtime::Runtime,
}

impl Region {
    pub fn start(spec: ClusterSpec) -> Region {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sim = rt.block_on(Sim::start(spec)).expect("berth-sim starts");
        Region { sim, rt }
    }

    pub fn seed() -> Region {
        Region::start(ClusterSpec::seed())
    }

    /// The seed cluster with fed-minion's spec changed by `minion` (its tags, user-data, ...).
    pub fn seed_with(minion: impl FnOnce(&mut berth_sim::InstanceSpec)) -> Region {
        let mut spec = ClusterSpec::seed();
        let m = spec
            .instances
            .iter_mut()
            .find(|i| i.name == "fed-minion")
            .expect("the seed has fed-minion");
        minion(m);
        Region::start(spec)
    }

    /// `berth-agent ARGS --root ROOT --imds-endpoint (the node's) --ec2-endpoint (the region's)`.
    pub fn agent(&self, node: &str, root: &Path, args: &[&str]) -> Output {
        let imds = self
            .sim
            .imds_url(node)
            .unwrap_or_else(|| panic!("no IMDS for {node}"));
        let mut cmd = Command::new(bin("berth-agent"));
        cmd.args(args).arg("--root").arg(root).args([
            "--imds-endpoint",
            &imds,
            "--ec2-endpoint",
            &self.sim.ec2_url(),
        ]);
        cmd.output().expect("berth-agent runs")
    }

    /// `run --once --no-host-actions`, asserting success.
    pub fn converge(&self, node: &str, root: &Path) -> Output {
        let out = self.agent(node, root, &["run", "--once", "--no-host-actions"]);
        assert!(
            out.status.success(),
            "{node}: berth-agent failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `plan --format json`, parsed.
    pub fn plan(&self, node: &str, root: &Path) -> serde_json::Value {
        let out = self.agent(node, root, &["plan", "--format", "json"]);
        assert!(
            out.status.success(),
            "{node}: plan failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("plan JSON")
    }

    pub fn launch(&self, spec: berth_sim::InstanceSpec) -> String {
        self.rt.block_on(self.sim.launch(spec)).expect("launch")
    }
}

/// Every regular file under `root`, relative path → bytes (the state directory left out).
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("var/lib/berth") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Modification times and inodes of every file under `root`: a run that "writes nothing" leaves
/// them all as they were.
pub fn stamps(root: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = tree(root)
        .keys()
        .map(|k| {
            let m = std::fs::metadata(root.join(k)).unwrap();
            (k.clone(), m.ino(), m.modified().unwrap())
        })
        .collect();
    v.sort();
    v
}
