//! moto, an independent implementation of the EC2, IAM and STS APIs, as the judge of berth's
//! signed EC2 requests.
//!
//! [`Moto::start`] starts `moto_server` from the venv that `tests/setup/moto.sh` installs, with
//! `INITIAL_NO_AUTH_ACTION_COUNT` equal to the number of calls `tests/moto/setup.py` makes: the
//! setup (VPC, security groups, tagged instances, IAM roles, STS AssumeRole) goes through
//! unauthenticated, and from then on moto verifies every SigV4 signature (session token
//! included) and enforces the roles' IAM policies. The setup script proves that before it
//! returns, with a request signed by a wrong secret that moto must refuse.
//!
//! [`World::mirror`] turns what moto created into a `berth_sim` cluster whose emulated IMDS
//! describes one of moto's instances and serves the STS credentials of its role, so the real
//! `berth-agent` reads its identity from berth-sim and discovers its peers in moto.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_sim::{ClusterSpec, CredentialsSpec, InstanceSpec, SecurityGroupSpec};
use serde::Deserialize;

use crate::agent::workspace;

/// How long moto may take to import and bind. It needs 1 to 3 s on an idle machine; a CI
/// machine compiling next to it can be several times slower.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The venv `tests/setup/moto.sh` builds.
pub fn venv() -> PathBuf {
    let cache = std::env::var_os("BERTH_CACHE").unwrap_or_else(|| "/var/cache/berth".into());
    PathBuf::from(cache).join("moto-venv")
}

fn installed() -> bool {
    venv().join(".berth-venv-complete").exists() && venv().join("bin/moto_server").exists()
}

/// Whether the venv is there. When it is not: in CI (`CI` set) a failure, since the suite must
/// run; elsewhere a loud message that `suite` is skipped.
fn installed_or_skip(suite: &str) -> bool {
    if installed() {
        return true;
    }
    let msg = format!(
        "moto is not installed at {}: run `bash tests/setup/moto.sh` (as root, or with \
         BERTH_CACHE pointing at a writable directory)",
        venv().display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("\n!!! SKIPPING {suite}: {msg}\n");
    false
}

/// The role credentials STS issued, as `setup.py` prints them.
#[derive(Debug, Clone, Deserialize)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: String,
}

/// One instance moto launched.
#[derive(Debug, Clone, Deserialize)]
pub struct MotoInstance {
    pub instance_id: String,
    pub private_ip: Ipv4Addr,
    pub private_dns_name: String,
    pub security_group: String,
    /// Tags besides `Name` (the instance's key in [`World::instances`]).
    pub tags: BTreeMap<String, String>,
    pub state: String,
}

/// What `tests/moto/setup.py` created in moto.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct World {
    pub region: String,
    pub vpc_id: String,
    pub subnet_id: String,
    /// `A` (the cluster's) and `B` (another workload's) → group id.
    pub security_groups: BTreeMap<String, String>,
    /// By Name tag.
    pub instances: BTreeMap<String, MotoInstance>,
    /// By IAM role name: `berth-node` (DescribeInstances and DescribeTags) and
    /// `berth-node-no-tags` (DescribeInstances only).
    pub credentials: BTreeMap<String, Credentials>,
    pub setup_calls: u32,
}

impl World {
    pub fn instance(&self, name: &str) -> &MotoInstance {
        self.instances
            .get(name)
            .unwrap_or_else(|| panic!("moto has no instance named {name}"))
    }

    /// A berth-sim region whose only instance is moto's `name`: same id, address, DNS name, VPC,
    /// subnet, security group and tags, and an instance profile `role` whose credentials are the
    /// ones STS issued for it (`edit` may change them, to sign with a wrong secret).
    pub fn mirror(
        &self,
        name: &str,
        role: &str,
        edit: impl FnOnce(&mut CredentialsSpec),
    ) -> ClusterSpec {
        let inst = self.instance(name);
        let c = self
            .credentials
            .get(role)
            .unwrap_or_else(|| panic!("setup.py assumed no role {role}"));
        let mut credentials = CredentialsSpec {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            session_token: Some(c.session_token.clone()),
            expiration: Some(c.expiration.clone()),
        };
        edit(&mut credentials);
        let mut spec = ClusterSpec {
            region: self.region.clone(),
            vpc_id: self.vpc_id.clone(),
            subnet_id: self.subnet_id.clone(),
            security_groups: self
                .security_groups
                .iter()
                .map(|(label, id)| SecurityGroupSpec {
                    id: id.clone(),
                    name: format!("moto-{label}"),
                })
                .collect(),
            ..ClusterSpec::default()
        };
        let mut i = InstanceSpec::new(name, inst.private_ip);
        i.instance_id = Some(inst.instance_id.clone());
        i.private_dns_name = Some(inst.private_dns_name.clone());
        i.vpc_id = Some(self.vpc_id.clone());
        i.subnet_id = Some(self.subnet_id.clone());
        i.security_groups = Some(vec![inst.security_group.clone()]);
        i.tags = inst.tags.clone();
        i.state = Some(inst.state.clone());
        i.iam_role = Some(role.to_string());
        i.credentials = Some(credentials);
        spec.instances.push(i);
        spec.validate().expect("the mirrored cluster is valid");
        spec
    }
}

/// A running `moto_server` holding the world `setup.py` built; killed (by PID) on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub world: World,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// From spawning moto to the end of the setup.
    pub startup: Duration,
}

impl Moto {
    /// Starts moto and builds the world, or returns `None` with a loud message when the venv is
    /// missing outside CI. In CI (`CI` set) a missing venv is a failure: the suite must run.
    pub fn start_or_skip() -> Option<Moto> {
        installed_or_skip("the moto compatibility test").then(Moto::start)
    }

    pub fn start() -> Moto {
        let (mut moto, world) = Moto::start_with_setup("tests/moto/setup.py", &[]);
        moto.world = serde_json::from_value(world).unwrap_or_else(|e| {
            panic!("tests/moto/setup.py's output is not the world it describes: {e}")
        });
        moto
    }

    /// As [`start_or_skip`](Self::start_or_skip), for [`start_plain`](Self::start_plain).
    pub fn start_plain_or_skip() -> Option<Moto> {
        installed_or_skip("the moto test").then(Moto::start_plain)
    }

    /// A bare moto serving every service on one port (EC2, and the EBS direct APIs routed by
    /// the SigV4 service name `ebs`), started normally: any credentials are accepted and no
    /// world is built (`world` is empty). For suites that create their own resources.
    pub fn start_plain() -> Moto {
        let began = Instant::now();
        let mut moto = Moto::spawn(None);
        moto.startup = began.elapsed();
        moto
    }

    /// Spawns `moto_server` and waits until it listens, with an empty world and `url` set.
    /// `no_auth_calls` is moto's INITIAL_NO_AUTH_ACTION_COUNT: that many calls are served
    /// before moto checks credentials; without it moto accepts any credentials.
    fn spawn(no_auth_calls: Option<u32>) -> Moto {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("moto.log");
        let log_file = std::fs::File::create(&log).expect("moto log file");
        // Port 0: the kernel picks a free port and werkzeug reports it, so parallel tests never
        // race for one.
        let mut command = Command::new(venv().join("bin/moto_server"));
        command.args(["-H", "127.0.0.1", "-p", "0"]);
        if let Some(calls) = no_auth_calls {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", calls.to_string());
        }
        let child = command
            // No terminal colours in the log we parse and show.
            .env("NO_COLOR", "1")
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("moto_server starts");
        let mut moto = Moto {
            child,
            url: String::new(),
            world: World::default(),
            log,
            _dir: dir,
            startup: Duration::ZERO,
        };
        let addr = moto.wait_listening();
        moto.url = format!("http://{addr}");
        moto
    }

    /// As [`start_with_setup`](Self::start_with_setup), or `None` with a loud message when the
    /// venv is missing outside CI (a failure in CI).
    pub fn start_with_setup_or_skip(
        suite: &str,
        script: &str,
        args: &[&str],
    ) -> Option<(Moto, serde_json::Value)> {
        installed_or_skip(suite).then(|| Moto::start_with_setup(script, args))
    }

    /// Starts moto with IAM enforced after the setup `script` (a path under the workspace, run
    /// with the venv's python): the script answers `--call-count` with the number of calls it
    /// makes, moto lets exactly that many through unauthenticated, and the script then runs
    /// with `--endpoint URL` and `args` and prints one JSON object, returned here.
    pub fn start_with_setup(script: &str, args: &[&str]) -> (Moto, serde_json::Value) {
        let began = Instant::now();
        let python = venv().join("bin/python");
        let script = workspace().join(script);
        let out = Command::new(&python)
            .arg(&script)
            .arg("--call-count")
            .output()
            .expect("the venv's python runs");
        assert!(
            out.status.success(),
            "{} --call-count: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let calls: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("--call-count prints a number");
        let mut moto = Moto::spawn(Some(calls));
        let out = Command::new(&python)
            .arg(&script)
            .args(["--endpoint", &moto.url])
            .args(args)
            .output()
            .expect("the setup script runs");
        assert!(
            out.status.success(),
            "{} failed ({}):\n{}\n--- moto's log\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            moto.log()
        );
        let world: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{} printed no JSON object: {e}\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(
            world["setup_calls"], calls,
            "the script made the calls it planned"
        );
        moto.startup = began.elapsed();
        (moto, world)
    }

    /// The venv's python, for scripts that use boto3 against this moto.
    pub fn python() -> PathBuf {
        venv().join("bin/python")
    }

    /// Waits for werkzeug's "Running on http://127.0.0.1:PORT" and a successful connect.
    fn wait_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on moto") {
                panic!("moto_server exited ({status}):\n{}", self.log());
            }
            if let Some(addr) = listening_addr(&self.log()) {
                if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                    return addr;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "moto_server did not listen within {START_DEADLINE:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything moto printed so far (one line per request it served).
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// moto's request lines (`"POST / HTTP/1.1" 200 -`) from the `n`-th on.
    pub fn requests_since(&self, n: usize) -> Vec<String> {
        self.request_lines().into_iter().skip(n).collect()
    }

    pub fn request_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("\" ") && l.contains("HTTP/1.1"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lossy(p: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn listening_addr(log: &str) -> Option<SocketAddr> {
    let rest = log.split("Running on http://").nth(1)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_werkzeugs_address() {
        let log = "WARNING: This is a development server.\n * Running on http://127.0.0.1:40231\nPress CTRL+C to quit\n";
        assert_eq!(
            listening_addr(log),
            Some("127.0.0.1:40231".parse().unwrap())
        );
        let colored = " * Running on http://127.0.0.1:5000\x1b[0m\n";
        assert_eq!(
            listening_addr(colored),
            Some("127.0.0.1:5000".parse().unwrap())
        );
        assert_eq!(listening_addr("starting\n"), None);
    }
}
