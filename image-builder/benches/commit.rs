//! Layering cost against base size: `berth-image commit` on bases of 5k and
//! 50k files, side by side with `ostree commit --tree=ref=BASE
//! --tree=dir=OVERLAY` on the same overlay. Prints a table; run with
//! `cargo bench -p berth-image --bench commit`.
//!
//! Bases are generated once into `${BERTH_CACHE:-/var/cache/berth}/image-bench`.
//! Each run layers a distinct agent (its bytes differ by a trailing run
//! number), so every run writes a new agent object as a real build would.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const SIZES: &[usize] = &[5_000, 50_000];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn make_tree(root: &Path, nfiles: usize) {
    for d in [
        "usr/bin",
        "usr/lib/systemd/system",
        "usr/etc",
        "usr/lib/modules/6.1.0/",
        "var",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("usr/lib/modules/6.1.0/vmlinuz"), b"kernel").unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    for i in 0..nfiles.div_ceil(50) {
        let pkg = root.join(format!("usr/share/doc/pkg{i:05}"));
        std::fs::create_dir_all(&pkg).unwrap();
        for j in 0..50.min(nfiles - i * 50) {
            std::fs::write(pkg.join(format!("f{j:03}")), format!("pkg {i} file {j}\n")).unwrap();
        }
    }
}

/// Returns the repo path holding ref `base` for a tree of `nfiles` files.
fn base_repo(cache: &Path, nfiles: usize) -> PathBuf {
    let dir = cache.join(format!("base-{nfiles}"));
    let repo = dir.join("repo");
    let done = dir.join("done");
    if done.exists() {
        return repo;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let tree = dir.join("tree");
    let t = Instant::now();
    make_tree(&tree, nfiles);
    run(Command::new("ostree")
        .args(["init", "--mode=archive", "--repo"])
        .arg(&repo));
    run(Command::new("ostree")
        .args([
            "commit",
            "-b",
            "base",
            "--owner-uid=0",
            "--owner-gid=0",
            "--repo",
        ])
        .arg(&repo)
        .arg(format!("--tree=dir={}", tree.display())));
    std::fs::remove_dir_all(&tree).unwrap();
    eprintln!(
        "generated base of {nfiles} files in {:?} (cached)",
        t.elapsed()
    );
    std::fs::write(done, b"").unwrap();
    repo
}

/// The overlay berth-image writes, as a directory for the ostree CLI.
fn overlay_dir(dir: &Path, agent: &Path, profiles: &Path, config: &Path) -> PathBuf {
    let o = dir.join("overlay");
    let _ = std::fs::remove_dir_all(&o);
    let sys = o.join("usr/lib/systemd/system");
    std::fs::create_dir_all(sys.join("multi-user.target.wants")).unwrap();
    std::fs::create_dir_all(o.join("usr/lib/systemd/system-preset")).unwrap();
    std::fs::create_dir_all(o.join("usr/bin")).unwrap();
    std::fs::create_dir_all(o.join("usr/etc/berth")).unwrap();
    std::fs::create_dir_all(o.join("usr/share/berth/profiles/p/templates")).unwrap();
    std::fs::copy(agent, o.join("usr/bin/berth-agent")).unwrap();
    for (name, body) in berth_image::units::EMBEDDED {
        let dest = if name.ends_with(".preset") {
            o.join("usr/lib/systemd/system-preset").join(name)
        } else {
            sys.join(name)
        };
        std::fs::write(&dest, body).unwrap();
        if !name.ends_with(".preset") {
            symlink(
                format!("../{name}"),
                sys.join("multi-user.target.wants").join(name),
            )
            .unwrap();
        }
    }
    std::fs::copy(
        profiles.join("p/templates/a.j2"),
        o.join("usr/share/berth/profiles/p/templates/a.j2"),
    )
    .unwrap();
    std::fs::copy(
        profiles.join("p/profile.yaml"),
        o.join("usr/share/berth/profiles/p/profile.yaml"),
    )
    .unwrap();
    std::fs::copy(config, o.join("usr/etc/berth/config.yaml")).unwrap();
    o
}

/// CPU time (user + system) used so far by finished child processes.
fn children_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `cmd`, returning (wall, cpu) time.
fn timed(cmd: &mut Command) -> (Duration, Duration) {
    let cpu = children_cpu();
    let t = Instant::now();
    run(cmd);
    (t.elapsed(), children_cpu() - cpu)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let cache =
        PathBuf::from(std::env::var("BERTH_CACHE").unwrap_or_else(|_| "/var/cache/berth".into()))
            .join("image-bench");
    std::fs::create_dir_all(&cache).unwrap();
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_berth-image");
    // A realistic agent: a few-MB Rust ELF (berth-image itself).
    let agent_src = std::fs::read(bin).unwrap();
    let profiles = work.path().join("profiles");
    std::fs::create_dir_all(profiles.join("p/templates")).unwrap();
    std::fs::write(profiles.join("p/templates/a.j2"), b"x = {{ y }}\n").unwrap();
    std::fs::write(profiles.join("p/profile.yaml"), b"name: p\n").unwrap();
    let config = work.path().join("config.yaml");
    std::fs::write(&config, b"cluster: bench\n").unwrap();

    println!(
        "agent {} bytes, {RUNS} runs each: median wall (min..max), median cpu (user+sys)",
        agent_src.len()
    );
    println!(
        "{:>7}  {:>36}  {:>36}",
        "base", "berth-image commit", "ostree commit --tree=ref --tree=dir"
    );
    // With fsync the wall time is dominated by libostree's durability
    // barrier at commit_transaction (syncfs of the whole filesystem, an fsync
    // of each of the 256 object directories), which depends on what else is
    // writing to the disk; without it, what is left is the layering itself.
    for fsync in ["true", "false"] {
        println!("core.fsync={fsync}");
        for &n in SIZES {
            let repo = base_repo(&cache, n);
            run(Command::new("ostree")
                .args(["config", "set", "core.fsync", fsync, "--repo"])
                .arg(&repo));
            let mut ours = Vec::new();
            let mut cli = Vec::new();
            for i in 0..RUNS {
                let agent = work.path().join(format!("agent-{n}-{i}"));
                let mut bytes = agent_src.clone();
                bytes.extend_from_slice(format!("run {n} {i} {:?}", Instant::now()).as_bytes());
                std::fs::write(&agent, &bytes).unwrap();
                std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();

                ours.push(timed(
                    Command::new(bin)
                        .args([
                            "commit",
                            "--base",
                            "base",
                            "--ref",
                            "bench/berth",
                            "--agent-version",
                            "0.0.0",
                            "--repo",
                        ])
                        .arg(&repo)
                        .arg("--agent")
                        .arg(&agent)
                        .arg("--profiles")
                        .arg(&profiles)
                        .arg("--config")
                        .arg(&config)
                        .env("SOURCE_DATE_EPOCH", "1700000000"),
                ));

                // Same overlay, a distinct agent object again for the CLI.
                bytes.extend_from_slice(b" cli");
                std::fs::write(&agent, &bytes).unwrap();
                let o = overlay_dir(work.path(), &agent, &profiles, &config);
                cli.push(timed(
                    Command::new("ostree")
                        .args([
                            "commit",
                            "-b",
                            "bench/cli",
                            "--tree=ref=base",
                            "--owner-uid=0",
                            "--owner-gid=0",
                            "--repo",
                        ])
                        .arg(&repo)
                        .arg(format!("--tree=dir={}", o.display())),
                ));
            }
            let fmt = |v: &Vec<(Duration, Duration)>| {
                let wall: Vec<_> = v.iter().map(|x| x.0).collect();
                let cpu: Vec<_> = v.iter().map(|x| x.1).collect();
                format!(
                    "{:.0?} ({:.0?}..{:.0?}) cpu {:.0?}",
                    median(wall.clone()),
                    wall.iter().min().unwrap(),
                    wall.iter().max().unwrap(),
                    median(cpu)
                )
            };
            println!("{:>7}  {:>36}  {:>36}", n, fmt(&ours), fmt(&cli));
            // Keep the cached repo small: drop the bench refs' objects.
            run(Command::new("ostree")
                .args(["refs", "--delete", "bench", "--repo"])
                .arg(&repo));
            run(Command::new("ostree")
                .args(["prune", "--refs-only", "--repo"])
                .arg(&repo));
            run(Command::new("ostree")
                .args(["config", "set", "core.fsync", "true", "--repo"])
                .arg(&repo));
        }
    }
}
