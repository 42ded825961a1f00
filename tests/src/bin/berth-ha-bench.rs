//! `berth-ha-bench`: how long the `kubeadm` profile's etcd tier takes to form a cluster of
//! masters and to heal it after a master is terminated, printed (never asserted in tests).
//!
//! Each figure is taken on the LAN of the end-to-end suite (`berth_e2e::ha`): masters are
//! systemd-nspawn containers in network namespaces of their own, berth-sim is EC2, IMDS and
//! Parameter Store, and the cluster is judged from outside with `etcdctl` (`endpoint health` of
//! every live master, and `member list` showing exactly the live masters as started voters),
//! with a look started every 100 ms while the agents run. For N = 3 and N = 5, each repetition on a fresh LAN:
//!
//! - boot: N containers launched at once, until systemd in each is running;
//! - formation: every master's agent (`run --once`) started at once, until the cluster is
//!   first seen healthy with N voters, and until every agent returned;
//! - replacement on a new address: a follower terminated and its replacement launched right
//!   away on another address (the termination and the container boot timed apart), then every
//!   live master's agent at once, as their daemons would run, until the cluster is healthy with
//!   N voters again (the dead member removed), and until every agent returned;
//! - replacement on the same address: the same with the terminated follower's address;
//! - the resident memory (VmRSS) of each master's etcd once formed.
//!
//! An agent round in which an agent exits non-zero is run again (a daemon would on its next
//! pass); rounds beyond the first are printed. The agent is the debug build the suite runs.
//! `--logs DIR` keeps each agent's log (`BERTH_LOG=debug`) of each round.
//!
//! Run as root: `cargo build -p berth-e2e --bin berth-ha-bench && target/debug/berth-ha-bench
//! --reps 3`. Every container, namespace and process is stopped on the way out.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use berth_agent::etcd::pki::{leaves, ClusterCa};
use berth_e2e::ha::{describe, master_spec, Ha, CA_PARAMETER};

/// How long a cluster may take to become healthy after its agents returned before the
/// repetition is reported as not healed: far above any figure seen, so that only a broken
/// cluster reaches it.
const HEAL_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the cluster is looked at from outside while the agents run: each look is two
/// etcdctl processes, so more often would take CPU from the masters on a small machine.
const POLL: Duration = Duration::from_millis(100);

/// Looks at the cluster in flight at once at most, each two etcdctl processes: a failing look
/// takes etcdctl's timeout (1 s), so this many keep a look starting every [`POLL`].
const LOOKS_IN_FLIGHT: usize = 16;

/// Agent rounds before a repetition is given up: a daemon would go on, a benchmark stops.
const MAX_ROUNDS: usize = 5;

/// The agents of `which`, all at once, round after round until every one exits 0; the
/// number of rounds, or `None` after [`MAX_ROUNDS`].
fn converge_rounds(ha: &Ha, which: &[usize], phase: &str) -> Option<usize> {
    for round in 1..=MAX_ROUNDS {
        let outs: Vec<Output> = std::thread::scope(|s| {
            let handles: Vec<_> = which
                .iter()
                .map(|i| {
                    s.spawn(move || {
                        let t = Instant::now();
                        let out = ha.converge(*i);
                        (t.elapsed(), out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
        .into_iter()
        .zip(which)
        .map(|((took, out), i)| {
            let name = &ha.masters[*i].name;
            eprintln!(
                "{phase}, round {round}: {name}'s agent: {} in {took:.2?}",
                out.status
            );
            if let Some(dir) = logs() {
                let file = dir.join(format!(
                    "{}-{phase}-{round}-{name}.log",
                    ha.lan.bridge_netns()
                ));
                let _ = std::fs::write(file, &out.stderr);
            }
            out
        })
        .collect();
        let failed: Vec<(usize, &Output)> = which
            .iter()
            .copied()
            .zip(outs.iter())
            .filter(|(_, o)| !o.status.success())
            .collect();
        if failed.is_empty() {
            return Some(round);
        }
        for (i, out) in failed {
            eprintln!(
                "round {round}: {}'s agent: {}",
                ha.masters[i].name,
                describe(out)
            );
        }
    }
    None
}

/// Where `--logs DIR` asked each agent's log (its stderr) to be kept.
fn logs() -> Option<&'static Path> {
    LOGS.get().map(PathBuf::as_path)
}

static LOGS: OnceLock<PathBuf> = OnceLock::new();

/// etcdctl with a client certificate of the bench's own, issued from the cluster CA once the
/// masters stored it in Parameter Store, as `Ha::etcdctl` does; it needs only `&Ha`, so it can
/// judge the cluster while the agents run.
struct Judge {
    _dir: tempfile::TempDir,
    tls: [String; 3],
}

impl Judge {
    /// `None` while the CA is not stored yet.
    fn new(ha: &Ha) -> Option<Judge> {
        let (json, _) = ha.region.sim().parameter(CA_PARAMETER)?;
        let ca = ClusterCa::parse(&json).expect("the stored CA parses");
        let leaf = &leaves("i-00000000", std::net::Ipv4Addr::LOCALHOST)[2];
        let (cert, key) = ca.issue(leaf).expect("a client certificate");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write a TLS file");
            p.display().to_string()
        };
        let tls = [
            format!("--cacert={}", path("ca.crt", &ca.cert)),
            format!("--cert={}", path("etcdctl.crt", &cert)),
            format!("--key={}", path("etcdctl.key", &key)),
        ];
        Some(Judge { _dir: dir, tls })
    }

    /// `etcdctl ARGS` from the bridge namespace against the masters `which`; its stdout.
    fn etcdctl(&self, ha: &Ha, which: &[usize], args: &[&str]) -> Vec<u8> {
        let endpoints = format!("--endpoints={}", ha.endpoints(which).join(","));
        let mut argv = vec![
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            &endpoints,
            // On the LAN a member answers within milliseconds; short timeouts keep a look at a
            // cluster that is not formed yet short, and so the figures' resolution fine.
            "--command-timeout=1s",
            "--dial-timeout=500ms",
        ];
        argv.extend(self.tls.iter().map(String::as_str));
        argv.extend(args);
        ha.lan.exec(&argv).stdout
    }

    /// Whether every endpoint of `which` is healthy and the member list, through them, is
    /// exactly `which`'s instances as started voters.
    fn formed(&self, ha: &Ha, which: &[usize]) -> bool {
        let out = self.etcdctl(ha, which, &["endpoint", "health", "-w", "json"]);
        let Ok(health) = serde_json::from_slice::<Vec<serde_json::Value>>(&out) else {
            return false;
        };
        if health.len() != which.len() || health.iter().any(|e| e["health"] != true) {
            return false;
        }
        let out = self.etcdctl(ha, which, &["member", "list", "-w", "json"]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out) else {
            return false;
        };
        let Some(members) = v["members"].as_array() else {
            return false;
        };
        let mut names = Vec::new();
        for m in members {
            let name = m["name"].as_str().unwrap_or("");
            if name.is_empty() || m["isLearner"].as_bool() == Some(true) {
                return false;
            }
            names.push(name.to_string());
        }
        names.sort();
        names == ha.ids(which)
    }
}

/// The judge of `ha`'s cluster, made once the masters stored the CA.
fn judge<'a>(ha: &Ha, judge: &'a OnceLock<Judge>) -> Option<&'a Judge> {
    if judge.get().is_none() {
        if let Some(j) = Judge::new(ha) {
            let _ = judge.set(j);
        }
    }
    judge.get()
}

/// What one phase took, from the moment every agent of it was started.
struct Phase {
    /// Until the last agent of the last round returned.
    agents: Duration,
    /// Until the cluster was first seen formed: the start of the earliest look that found it
    /// formed, so within [`POLL`] of the moment it was.
    healed: Duration,
    rounds: usize,
}

/// Every agent of `which` at once ([`converge_rounds`]) while the cluster is looked at from
/// outside every [`POLL`], looks overlapping (a look at a cluster not formed yet waits for
/// etcdctl's timeout), until the agents returned and a look found it formed, or up to
/// [`HEAL_TIMEOUT`] after the agents. The cluster must then still be formed; when a later look
/// finds it is not, the first look after that which finds it formed counts.
fn run_phase(ha: &Ha, which: &[usize], phase: &str) -> Result<Phase, String> {
    let cell = OnceLock::new();
    let start = Instant::now();
    let earliest = |a: Option<Duration>, b: Duration| Some(a.map_or(b, |a| a.min(b)));
    let (rounds, agents, mut healed) = std::thread::scope(|s| {
        let agents = s.spawn(|| {
            let rounds = converge_rounds(ha, which, phase);
            (rounds, start.elapsed())
        });
        let mut healed = None;
        let mut looks = Vec::new();
        let mut agents_done = None;
        loop {
            if agents_done.is_none() && agents.is_finished() {
                agents_done = Some(start.elapsed());
            }
            let (finished, pending): (Vec<_>, Vec<_>) = looks
                .into_iter()
                .partition(|h: &ScopedJoinHandle<_>| h.is_finished());
            looks = pending;
            for h in finished {
                if let (at, true) = h.join().expect("a look") {
                    healed = earliest(healed, at);
                }
            }
            // Until the agents returned and the cluster was seen formed, or it is overdue.
            if let Some(done) = agents_done {
                if healed.is_some() || start.elapsed() > done + HEAL_TIMEOUT {
                    break;
                }
            }
            if healed.is_none() && looks.len() < LOOKS_IN_FLIGHT {
                if let Some(j) = judge(ha, &cell) {
                    let at = start.elapsed();
                    looks.push(s.spawn(move || (at, j.formed(ha, which))));
                }
            }
            std::thread::sleep(POLL);
        }
        for h in looks {
            if let (at, true) = h.join().expect("a look") {
                healed = earliest(healed, at);
            }
        }
        let (rounds, took) = agents.join().expect("the agents' thread");
        (rounds, took, healed)
    });
    let rounds = rounds.ok_or_else(|| format!("agents failed {MAX_ROUNDS} rounds"))?;
    // Formed now, not only at some moment during the run.
    loop {
        let look = start.elapsed();
        if judge(ha, &cell).is_some_and(|j| j.formed(ha, which)) {
            healed.get_or_insert(look);
            break;
        }
        if look > agents + HEAL_TIMEOUT {
            return Err(format!("not healthy {HEAL_TIMEOUT:?} after the agents"));
        }
        healed = None;
        std::thread::sleep(POLL);
    }
    Ok(Phase {
        agents,
        healed: healed.expect("set when formed"),
        rounds,
    })
}

/// The member id of the leader, as `endpoint status` of the live masters reports it.
fn leader_id(ha: &mut Ha, which: &[usize]) -> Option<u64> {
    let eps = ha.endpoints(which);
    let out = ha.etcdctl(&eps, &["endpoint", "status", "-w", "json"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    v.iter().find_map(|e| e["Status"]["leader"].as_u64())
}

/// A live master that is not the leader, and whether `endpoint status` confirmed it (when it
/// does not answer, the last live master is taken).
fn a_follower(ha: &mut Ha, live: &[usize]) -> (usize, bool) {
    let leader = leader_id(ha, live);
    for &i in live.iter().rev() {
        let eps = ha.endpoints(&[i]);
        let out = ha.etcdctl(&eps, &["endpoint", "status", "-w", "json"]);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let me = v
            .first()
            .and_then(|e| e["Status"]["header"]["member_id"].as_u64());
        if leader.is_some() && me.is_some() && me != leader {
            return (i, true);
        }
    }
    (*live.last().unwrap(), false)
}

/// VmRSS of master `i`'s etcd in KiB, read inside its container (its own PID namespace).
fn etcd_rss_kib(ha: &Ha, i: usize) -> Option<u64> {
    let ct = &ha.masters[i].ct;
    let out = ct.exec(&[
        "systemctl",
        "show",
        "-p",
        "MainPID",
        "--value",
        "etcd.service",
    ]);
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if pid.is_empty() || pid == "0" {
        return None;
    }
    let out = ct.exec(&["cat", &format!("/proc/{pid}/status")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The figures of one N, over the repetitions.
#[derive(Default)]
struct Figures {
    boot: Vec<Duration>,
    form_agents: Vec<Duration>,
    form_heal: Vec<Duration>,
    form_rounds: Vec<usize>,
    new_boot: Vec<Duration>,
    new_agents: Vec<Duration>,
    new_heal: Vec<Duration>,
    new_total: Vec<Duration>,
    new_rounds: Vec<usize>,
    same_boot: Vec<Duration>,
    same_agents: Vec<Duration>,
    same_heal: Vec<Duration>,
    same_total: Vec<Duration>,
    same_rounds: Vec<usize>,
    rss_kib: Vec<u64>,
    /// Replaced masters not confirmed to be followers.
    unconfirmed: usize,
    failures: Vec<String>,
}

/// Replace follower `victim` by a new master at `host` (the victim's own address or a new
/// one), launched right away; then every live master's agent at once until the cluster is
/// healthy with N voters. Returns the new live set, the time from the termination until the
/// replacement booted, and the agents' phase; or why it did not heal.
fn replace(
    ha: &mut Ha,
    live: &[usize],
    victim: usize,
    host: u8,
    phase: &str,
) -> Result<(Vec<usize>, Duration, Phase), String> {
    let name = format!("m{}", ha.masters.len() + 1);
    let spec = master_spec(&ha.lan, &name, host);
    let t = Instant::now();
    let new = {
        let Ha {
            masters,
            lan,
            region,
            ..
        } = ha;
        masters[victim].replace(lan, region, spec, |_| {})
    };
    let boot = t.elapsed();
    ha.masters.push(new);
    let live: Vec<usize> = live
        .iter()
        .copied()
        .filter(|i| *i != victim)
        .chain([ha.masters.len() - 1])
        .collect();
    let phase = run_phase(ha, &live, phase)?;
    Ok((live, boot, phase))
}

fn repetition(n: usize, f: &mut Figures, etcd_version: &mut Option<String>) {
    let mut ha = Ha::new(&format!("bench{n}"));
    let t = Instant::now();
    let all = ha.launch(n);
    f.boot.push(t.elapsed());
    if etcd_version.is_none() {
        let out = ha.masters[0].ct.exec(&["etcd", "--version"]);
        *etcd_version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_string);
    }

    match run_phase(&ha, &all, "formation") {
        Ok(p) => {
            f.form_agents.push(p.agents);
            f.form_heal.push(p.healed);
            f.form_rounds.push(p.rounds);
        }
        Err(e) => {
            f.failures.push(format!("N={n}: formation: {e}"));
            return;
        }
    }
    f.rss_kib
        .extend(all.iter().filter_map(|i| etcd_rss_kib(&ha, *i)));

    let (victim, follower) = a_follower(&mut ha, &all);
    f.unconfirmed += usize::from(!follower);
    let host = ha.next_host();
    let live = match replace(&mut ha, &all, victim, host, "new-address") {
        Ok((live, boot, p)) => {
            f.new_boot.push(boot);
            f.new_agents.push(p.agents);
            f.new_heal.push(p.healed);
            f.new_total.push(boot + p.healed);
            f.new_rounds.push(p.rounds);
            live
        }
        Err(e) => {
            f.failures
                .push(format!("N={n}: new-address replacement: {e}"));
            return;
        }
    };

    let (victim, follower) = a_follower(&mut ha, &live);
    f.unconfirmed += usize::from(!follower);
    let host = ha.masters[victim].ip.octets()[3];
    match replace(&mut ha, &live, victim, host, "same-address") {
        Ok((_, boot, p)) => {
            f.same_boot.push(boot);
            f.same_agents.push(p.agents);
            f.same_heal.push(p.healed);
            f.same_total.push(boot + p.healed);
            f.same_rounds.push(p.rounds);
        }
        Err(e) => f
            .failures
            .push(format!("N={n}: same-address replacement: {e}")),
    }
}

fn row(name: &str, v: &[Duration]) {
    if v.is_empty() {
        println!("{name:<62} (no figure)");
        return;
    }
    let mut v = v.to_vec();
    v.sort();
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "{name:<62} n={:<2} min {:>6.2} s  median {:>6.2} s  max {:>6.2} s",
        v.len(),
        s(v[0]),
        s(v[v.len() / 2]),
        s(v[v.len() - 1])
    );
}

fn rounds(name: &str, v: &[usize]) {
    if !v.is_empty() && v.iter().any(|r| *r > 1) {
        println!("{name:<62} agent rounds per repetition: {v:?}");
    }
}

fn print(n: usize, f: &Figures) {
    println!("-- N = {n} masters");
    row(&format!("boot: {n} containers launched at once"), &f.boot);
    row(
        &format!("formation: agents started, until {n} healthy voters"),
        &f.form_heal,
    );
    row(
        "formation: agents started, until all returned",
        &f.form_agents,
    );
    rounds("formation", &f.form_rounds);
    row(
        "new address: follower terminated, until replacement booted",
        &f.new_boot,
    );
    row(
        &format!("new address: agents started, until {n} healthy voters"),
        &f.new_heal,
    );
    row(
        "new address: agents started, until all returned",
        &f.new_agents,
    );
    row(
        "new address: terminated, until healthy (boot included)",
        &f.new_total,
    );
    rounds("new address", &f.new_rounds);
    row(
        "same address: follower terminated, until replacement booted",
        &f.same_boot,
    );
    row(
        &format!("same address: agents started, until {n} healthy voters"),
        &f.same_heal,
    );
    row(
        "same address: agents started, until all returned",
        &f.same_agents,
    );
    row(
        "same address: terminated, until healthy (boot included)",
        &f.same_total,
    );
    rounds("same address", &f.same_rounds);
    if !f.rss_kib.is_empty() {
        let mut v = f.rss_kib.clone();
        v.sort();
        let mib = |k: u64| k as f64 / 1024.0;
        println!(
            "{:<62} n={:<2} min {:>6.1} MiB median {:>6.1} MiB max {:>6.1} MiB",
            "etcd VmRSS per member, just formed",
            v.len(),
            mib(v[0]),
            mib(v[v.len() / 2]),
            mib(v[v.len() - 1])
        );
    }
    if f.unconfirmed > 0 {
        println!(
            "note: {} replaced master(s) not confirmed followers (endpoint status did not say)",
            f.unconfirmed
        );
    }
    for failure in &f.failures {
        println!("FAILED {failure}");
    }
}

fn usage() -> ! {
    eprintln!("usage: berth-ha-bench [--reps N] [--sizes 3,5] [--logs DIR]");
    std::process::exit(2);
}

fn main() {
    let mut reps = 3usize;
    let mut sizes = vec![3usize, 5];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => {
                reps = match args.next().and_then(|v| v.parse().ok()) {
                    Some(r) if r > 0 => r,
                    _ => usage(),
                }
            }
            "--sizes" => {
                sizes = match args.next().map(|v| {
                    v.split(',')
                        .map(|s| s.parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                }) {
                    Some(Ok(s)) if !s.is_empty() && s.iter().all(|n| (1..=9).contains(n)) => s,
                    _ => usage(),
                }
            }
            "--logs" => {
                let dir = PathBuf::from(args.next().unwrap_or_else(|| usage()));
                std::fs::create_dir_all(&dir).expect("create the --logs directory");
                let _ = LOGS.set(dir);
            }
            _ => usage(),
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "berth-ha-bench boots systemd-nspawn containers in network namespaces: run it as root"
        );
        std::process::exit(2);
    }
    let agent = berth_e2e::agent::bin("berth-agent");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("berth-ha-bench: the kubeadm profile's etcd tier on a LAN of systemd-nspawn masters");
    println!(
        "machine: {cpus} CPUs, load average {} at start",
        load.join(" ")
    );
    println!(
        "agent: {} (debug build, BERTH_LOG=debug, as the e2e suite runs it)",
        agent.display()
    );
    println!("repetitions: {reps}, each on a fresh LAN; the replaced masters are followers");

    let mut etcd_version = None;
    let mut all = Vec::new();
    for &n in &sizes {
        let mut f = Figures::default();
        for rep in 1..=reps {
            eprintln!("N={n}, repetition {rep}/{reps}");
            repetition(n, &mut f, &mut etcd_version);
        }
        all.push((n, f));
    }
    println!(
        "etcd in the masters: {}",
        etcd_version.as_deref().unwrap_or("unknown")
    );
    for (n, f) in &all {
        print(*n, f);
    }
}
