//! Every `tests/setup/*.sh` installs what its suite needs on a fresh machine of the kind berth's
//! tests run on, whatever versions that machine's image already carries.
//!
//! The machine is a copy of the cached debootstrapped bookworm rootfs ([`berth_e2e::fresh`])
//! made to look like the images CI machines start from: qemu-utils installed from
//! bookworm-backports while apt's sources list only bookworm, and no apt lists at all. There the
//! installing part of every setup script (`--install-only`) runs, in the order `tests/run` runs
//! them and sharing one `apt-get update` as it does; the test fails naming each script that
//! failed, with the end of its output. Then it checks what a user would: every tool each suite
//! needs runs, QEMU's packages agree with the qemu-utils the image carried (which is still
//! there), dpkg has nothing half-installed; and a second pass of every script installs nothing.
//!
//! The scripts reach the machine's own Debian mirror and the Python package index, as they do on
//! a real machine. Needs root; about two minutes here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_e2e::fresh::{Machine, Run, TESTS_INSIDE};

/// The whole test, installs included, must stay under ten minutes on a CI machine; it took
/// 111 to 133 s here (2 cores shared with other builds), 132 s of them with an empty `.deb` cache.
const BUDGET: Duration = Duration::from_secs(9 * 60);

/// What the machine image did to get its qemu-utils: bookworm-backports enabled from the
/// rootfs's own mirror, qemu-utils installed from there (without recommends, as the image has
/// it), the backports source removed again; then every apt list is removed, so a script that
/// installs without `apt-get update` fails here as it would on a machine whose lists are stale.
const IMAGE_RECIPE: &str = r#"set -eu
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
mirror="$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)"
[ -n "$mirror" ]
echo "deb $mirror $VERSION_CODENAME-backports main" >/etc/apt/sources.list.d/image-backports.list
apt-get update -qq
apt-get install -y -qq --no-install-recommends -t "$VERSION_CODENAME-backports" qemu-utils
rm /etc/apt/sources.list.d/image-backports.list
rm -rf /var/lib/apt/lists/*
dpkg-query -W -f='qemu-utils ${Version}\n' qemu-utils
"#;

/// Per setup script, what its suite runs, checked after the installing parts ran.
const CHECKS: &[(&str, &str)] = &[
    ("agent.sh", "strace -V && unshare --version && command -v getent"),
    ("dbus.sh", "dbus-daemon --version"),
    ("etcd.sh", "etcd --version && ETCDCTL_API=3 etcdctl version && ip -V && curl --version"),
    (
        "image.sh",
        "ostree --version && pkg-config --atleast-version=2022.7 ostree-1 && setfattr --version \
         && gpg --version && gpg-agent --version && command -v chattr",
    ),
    (
        "kubernetes.sh",
        "go version && jq --version && rsync --version && command -v dpkg-source",
    ),
    (
        "moto.sh",
        "/var/cache/berth/moto-venv/bin/python -c 'import moto, boto3, flask' \
         && test -x /var/cache/berth/moto-venv/bin/moto_server",
    ),
    (
        "nspawn.sh",
        "debootstrap --version && systemd-nspawn --version && dbus-daemon --version \
         && busctl --version",
    ),
    (
        "qemu.sh",
        "qemu-system-x86_64 --version && qemu-img --version \
         && for t in mkfs.fat mcopy mke2fs debugfs nc.openbsd; do command -v $t; done \
         && test -f /usr/share/OVMF/OVMF_CODE_4M.fd \
         && s=$(dpkg-query -W -f='${Version}' qemu-system-x86) \
         && u=$(dpkg-query -W -f='${Version}' qemu-utils) \
         && { [ \"$s\" = \"$u\" ] || { echo \"qemu-system-x86 $s beside qemu-utils $u\"; exit 1; }; }",
    ),
    (
        "runtime.sh",
        "python3 --version && command -v apt-get dpkg-deb systemd-nspawn mount",
    ),
    (
        "testos.sh",
        "debootstrap --version && ostree --version && command -v chattr",
    ),
    (
        "vagrant.sh",
        "vagrant --version && dpkg-query -W -f='${Status}\\n' vagrant-libvirt | grep -q 'ok installed' \
         && tar --version",
    ),
];

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The setup scripts `tests/run` runs, in its order (lib.sh is sourced by them, not run).
fn setup_scripts() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(tests_dir().join("setup"))
        .expect("tests/setup")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sh") && n != "lib.sh")
        .collect();
    names.sort();
    names
}

fn report(what: &str, run: &Run) -> String {
    let status = match run.status {
        Some(s) => s.to_string(),
        None => "killed at the test's deadline".to_string(),
    };
    format!(
        "{what}: {status} after {:.1} s; its output ends with:\n{}\n",
        run.elapsed.as_secs_f64(),
        run.tail(40)
    )
}

fn dpkg_status(machine: &Machine) -> Vec<u8> {
    std::fs::read(machine.root().join("var/lib/dpkg/status")).expect("the machine's dpkg status")
}

#[test]
fn every_setup_script_installs_on_a_fresh_machine() {
    let test = "every_setup_script_installs_on_a_fresh_machine";
    if !berth_e2e::can_run(test, "systemd-nspawn", "nspawn.sh") {
        return;
    }
    let start = Instant::now();
    let deadline = start + BUDGET;
    let scripts = setup_scripts();
    for (script, _) in CHECKS {
        assert!(
            scripts.iter().any(|s| s == script),
            "tests/setup/{script} is checked here but does not exist"
        );
    }

    let mut machine = Machine::new(&tests_dir());
    let logs = tempfile::tempdir().expect("log directory");
    let log = |name: &str| logs.path().join(format!("{name}.log"));

    let image = machine.run(&["sh", "-c", IMAGE_RECIPE], &log("image"), deadline);
    assert!(
        image.success(),
        "{}",
        report("preparing the machine (qemu-utils from backports)", &image)
    );
    let carried = image
        .output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("qemu-utils "))
        .expect("the installed qemu-utils version")
        .to_string();
    assert!(
        carried.contains("bpo"),
        "qemu-utils {carried} is not a backport"
    );
    let sources = std::fs::read_to_string(machine.root().join("etc/apt/sources.list")).unwrap();
    assert!(
        !sources.contains("backports")
            && std::fs::read_dir(machine.root().join("etc/apt/sources.list.d"))
                .unwrap()
                .next()
                .is_none(),
        "the machine's apt sources must list bookworm alone, as the image's do"
    );
    eprintln!(
        "machine ready in {:.1} s: qemu-utils {carried}, sources: bookworm",
        image.elapsed.as_secs_f64()
    );

    // As tests/run: one `apt-get update` shared by all the scripts.
    machine.setenv("BERTH_APT_STAMP", "/var/tmp/berth-apt-stamp");
    let mut failures = Vec::new();
    for script in &scripts {
        let path = format!("{TESTS_INSIDE}/setup/{script}");
        let run = machine.run(&["bash", &path, "--install-only"], &log(script), deadline);
        eprintln!(
            "tests/setup/{script} --install-only: {} in {:.1} s",
            if run.success() { "ok" } else { "FAILED" },
            run.elapsed.as_secs_f64()
        );
        if !run.success() {
            failures.push(report(
                &format!("tests/setup/{script} --install-only failed on a fresh bookworm machine"),
                &run,
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    let mut failures = Vec::new();
    for (script, check) in CHECKS {
        let run = machine.run(
            &["bash", "-c", &format!("set -e; {check}")],
            &log(&format!("check-{script}")),
            deadline,
        );
        if !run.success() {
            failures.push(report(
                &format!("after tests/setup/{script}, `{check}` fails"),
                &run,
            ));
        }
    }
    // autoclean: the `.deb` cache keeps only what the mirror still serves.
    let audit = machine.run(
        &[
            "sh",
            "-c",
            "dpkg --audit && apt-get check -qq && apt-get autoclean -qq",
        ],
        &log("audit"),
        deadline,
    );
    if !audit.success() || !audit.output.trim().is_empty() {
        failures.push(report("dpkg --audit / apt-get check", &audit));
    }
    let utils = machine.run(
        &["dpkg-query", "-W", "-f=${Version}\n", "qemu-utils"],
        &log("qemu-utils"),
        deadline,
    );
    if utils.output.trim() != carried {
        failures.push(format!(
            "qemu-utils {carried}, which the image carries, became `{}`\n",
            utils.output.trim()
        ));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    let first = start.elapsed();

    // Idempotent: a second pass installs nothing.
    let before = dpkg_status(&machine);
    let mut failures = Vec::new();
    let again = Instant::now();
    for script in &scripts {
        let path = format!("{TESTS_INSIDE}/setup/{script}");
        let run = machine.run(
            &["bash", &path, "--install-only"],
            &log(&format!("again-{script}")),
            deadline,
        );
        if !run.success() {
            failures.push(report(
                &format!("tests/setup/{script} --install-only, run again"),
                &run,
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(
        dpkg_status(&machine) == before,
        "a second pass of the setup scripts changed installed packages"
    );
    eprintln!(
        "fresh setup: every script installed in {:.1} s (machine included); a second pass took {:.1} s",
        first.as_secs_f64(),
        again.elapsed().as_secs_f64()
    );
}

/// lib.sh reads the Debian mirror from apt's sources, in either format, and adds backports
/// from it once. No root needed: apt is pointed at a directory of sources of the test's own.
#[test]
fn the_mirror_comes_from_the_machines_apt_sources() {
    if std::process::Command::new("apt-get")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs on Debian, which has apt-get"
        );
        eprintln!("\n*** SKIPPED the_mirror_comes_from_the_machines_apt_sources: no apt-get ***\n");
        return;
    }
    let lib = tests_dir().join("setup/lib.sh");
    // The fixtures name this machine's release, which is what lib.sh looks for.
    let os_release = std::fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .expect("VERSION_CODENAME in /etc/os-release")
        .trim_matches('"')
        .to_string();
    let cases: &[(&str, &str, &str)] = &[
        (
            "sources.list",
            "# the image's\n\
             deb-src http://src.invalid/debian bookworm main\n\
             deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://one.invalid/debian bookworm main contrib\n\
             deb http://one.invalid/debian-security bookworm-security main\n",
            "http://one.invalid/debian",
        ),
        (
            "sources.list.d/debian.sources",
            "Types: deb\n\
             # a comment inside the stanza\n\
             URIs: http://off.invalid/debian\n\
             Suites: bookworm\n\
             Components: main\n\
             Enabled: no\n\
             \n\
             Types: deb deb-src\n\
             URIs: http://two.invalid/debian/\n\
             Suites: bookworm-updates\n \
              bookworm\n\
             Components: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            "http://two.invalid/debian",
        ),
    ];
    for (file, text, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(etc.join("sources.list.d")).unwrap();
        std::fs::create_dir_all(etc.join("apt.conf.d")).unwrap();
        std::fs::create_dir_all(dir.path().join("lists/partial")).unwrap();
        std::fs::write(etc.join(file), text.replace("bookworm", &codename)).unwrap();
        let conf = dir.path().join("apt.conf");
        std::fs::write(
            &conf,
            format!(
                "Dir::Etc \"{}\";\nDir::State::Lists \"{}\";\n",
                etc.display(),
                dir.path().join("lists").display()
            ),
        )
        .unwrap();
        let script = format!(
            ". {}; berth_mirror; berth_enable_backports; berth_enable_backports; \
             berth_apt_sources | grep -c -- '-backports$'",
            lib.display()
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("APT_CONFIG", &conf)
            .env_remove("BERTH_DEBIAN_MIRROR")
            .output()
            .expect("bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.first(), Some(want), "{file}: the mirror\n{stdout}");
        assert_eq!(
            lines.last(),
            Some(&"1"),
            "{file}: one backports source\n{stdout}"
        );
        let added = std::fs::read_to_string(
            etc.join(format!("sources.list.d/berth-{codename}-backports.sources")),
        )
        .unwrap_or_else(|e| panic!("{file}: no backports source written: {e}"));
        assert!(
            added.contains(&format!("URIs: {want}\n"))
                && added.contains(&format!("Suites: {codename}-backports\n")),
            "{file}: {added}"
        );
    }

    // No source for the release: a clear error naming the fix, exit 1.
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("sources.list.d")).unwrap();
    std::fs::create_dir_all(etc.join("apt.conf.d")).unwrap();
    std::fs::write(etc.join("sources.list"), "").unwrap();
    let conf = dir.path().join("apt.conf");
    std::fs::write(&conf, format!("Dir::Etc \"{}\";\n", etc.display())).unwrap();
    let out = std::process::Command::new("bash")
        .args(["-c", &format!(". {}; berth_mirror", lib.display())])
        .env("APT_CONFIG", &conf)
        .env_remove("BERTH_DEBIAN_MIRROR")
        .output()
        .expect("bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("BERTH_DEBIAN_MIRROR"), "{stderr}");
}

/// `--install-only` is the one option; anything else is a usage error (exit 2) that installs
/// nothing.
#[test]
fn setup_scripts_take_install_only() {
    for script in setup_scripts() {
        let path = tests_dir().join("setup").join(&script);
        let out = std::process::Command::new("bash")
            .arg(&path)
            .arg("--instal-only")
            .output()
            .expect("bash");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{script} --instal-only: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let help = std::process::Command::new("bash")
            .arg(&path)
            .arg("--help")
            .output()
            .expect("bash");
        assert!(
            help.status.success()
                && String::from_utf8_lossy(&help.stdout).contains("--install-only"),
            "{script} --help"
        );
    }
}

/// An apt of its own, without root or network: sources, lists, a dpkg status and a mirror that
/// are files in a temporary directory (APT_CONFIG, DPKG_ADMINDIR), and an `apt-get` first on
/// PATH that records its calls, "downloads" on `update` the lists of every configured suite
/// from the mirror directory, and simulates `install` (`-s`). The real apt resolves everything.
struct AptWorld {
    dir: tempfile::TempDir,
    codename: String,
}

/// A bookworm qemu family and mtools, and bookworm-backports' qemu family (NotAutomatic, as the
/// archive has it): qemu-system-x86 needs qemu-system-common of its own version exactly.
const MAIN_PACKAGES: &str = "\
Package: qemu-utils\nSource: qemu\nVersion: 1:7.2+dfsg-7+b3\n\n\
Package: qemu-system-common\nSource: qemu\nVersion: 1:7.2+dfsg-7+b3\n\n\
Package: qemu-system-x86\nSource: qemu\nVersion: 1:7.2+dfsg-7+b3\nDepends: qemu-system-common (= 1:7.2+dfsg-7+b3)\n\n\
Package: mtools\nVersion: 4.0.33-1+b1\n\n";
const BACKPORTS_PACKAGES: &str = "\
Package: qemu-utils\nSource: qemu\nVersion: 1:10.0.2+ds-2~bpo12+1\nBreaks: qemu-system-common (<< 1:8.0)\n\n\
Package: qemu-system-common\nSource: qemu\nVersion: 1:10.0.2+ds-2~bpo12+1\n\n\
Package: qemu-system-x86\nSource: qemu\nVersion: 1:10.0.2+ds-2~bpo12+1\nDepends: qemu-system-common (= 1:10.0.2+ds-2~bpo12+1)\n\n";

impl AptWorld {
    /// A machine whose sources list the release alone, with `installed` (a qemu-utils version,
    /// or none) installed.
    fn new(codename: &str, installed: Option<&str>) -> AptWorld {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        for d in [
            "etc/sources.list.d",
            "etc/apt.conf.d",
            "etc/preferences.d",
            "lists/partial",
            "dpkg/updates",
            "dpkg/info",
            "cache/archives/partial",
            "mirror",
            "bin",
        ] {
            std::fs::create_dir_all(w.join(d)).unwrap();
        }
        std::fs::write(
            w.join("etc/sources.list"),
            format!("deb http://mirror.invalid/debian {codename} main\n"),
        )
        .unwrap();
        let stanzas = |text: &str| {
            text.split("\n\n")
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let name = s.lines().next().unwrap().trim_start_matches("Package: ");
                    format!(
                        "{s}\nArchitecture: amd64\nMaintainer: berth <berth@invalid>\n\
                         Installed-Size: 1\nFilename: pool/main/{name}.deb\nSize: 1\n\
                         SHA256: {}\nDescription: {name}\n\n",
                        "0".repeat(64)
                    )
                })
                .collect::<String>()
        };
        for (suite, packages, extra) in [
            (codename.to_string(), MAIN_PACKAGES, ""),
            (
                format!("{codename}-backports"),
                BACKPORTS_PACKAGES,
                "NotAutomatic: yes\nButAutomaticUpgrades: yes\n",
            ),
        ] {
            let base = format!("mirror/mirror.invalid_debian_dists_{suite}");
            std::fs::write(
                w.join(format!("{base}_main_binary-amd64_Packages")),
                stanzas(packages),
            )
            .unwrap();
            std::fs::write(
                w.join(format!("{base}_Release")),
                format!(
                    "Origin: Debian\nSuite: {suite}\nCodename: {suite}\n{extra}\
                     Date: Sat, 01 Nov 2025 00:00:00 UTC\nArchitectures: amd64\nComponents: main\n"
                ),
            )
            .unwrap();
        }
        let status = match installed {
            Some(version) => format!(
                "Package: qemu-utils\nStatus: install ok installed\nSource: qemu\n\
                 Version: {version}\nBreaks: qemu-system-common (<< 1:8.0)\nArchitecture: amd64\n\
                 Maintainer: berth <berth@invalid>\nDescription: qemu-utils\n\n"
            ),
            None => String::new(),
        };
        std::fs::write(w.join("dpkg/status"), status).unwrap();
        std::fs::write(
            w.join("apt.conf"),
            format!(
                "Dir::Etc \"{w}/etc\";\nDir::State::Lists \"{w}/lists\";\n\
                 Dir::State::status \"{w}/dpkg/status\";\nDir::Cache \"{w}/cache\";\n\
                 Dir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\n\
                 APT::Get::AllowUnauthenticated \"true\";\n",
                w = w.display()
            ),
        )
        .unwrap();
        let shim = w.join("bin/apt-get");
        std::fs::write(
            &shim,
            format!(
                r#"#!/bin/bash
printf '%s\n' "$*" >>{w}/calls
case " $* " in
*" update "*)
    for suite in $(/usr/bin/apt-get indextargets --no-release-info --format '$(RELEASE)' | sort -u); do
        cp {w}/mirror/*_dists_"$suite"_* {w}/lists/ 2>/dev/null || true
    done
    exit 0 ;;
*" install "*) exec /usr/bin/apt-get -s "$@" ;;
esac
exec /usr/bin/apt-get "$@"
"#,
                w = w.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        AptWorld {
            dir,
            codename: codename.to_string(),
        }
    }

    /// Runs lib.sh's `berth_apt_install` with `packages`; (exit code, stdout + stderr).
    fn install(&self, packages: &str, stamp: Option<&std::path::Path>) -> (Option<i32>, String) {
        let w = self.dir.path();
        let lib = tests_dir().join("setup/lib.sh");
        let mut cmd = std::process::Command::new("bash");
        cmd.args([
            "-c",
            &format!(". {}; berth_apt_install {packages}", lib.display()),
        ])
        .env("APT_CONFIG", w.join("apt.conf"))
        .env("DPKG_ADMINDIR", w.join("dpkg"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                w.join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env_remove("BERTH_DEBIAN_MIRROR")
        .env_remove("BERTH_APT_STAMP");
        if let Some(stamp) = stamp {
            cmd.env("BERTH_APT_STAMP", stamp);
        }
        let out = cmd.output().expect("bash");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// The apt-get calls lib.sh made, without the read-only `indextargets` ones.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("indextargets"))
            .map(str::to_string)
            .collect()
    }

    fn backports_source(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(format!(
            "etc/sources.list.d/berth-{}-backports.sources",
            self.codename
        )))
        .ok()
    }
}

fn host_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
}

/// The release rule of lib.sh's `berth_apt_install`, on an apt of the test's own (no root, no
/// network): QEMU from the release of the qemu-utils the machine carries.
#[test]
fn packages_come_from_the_release_of_their_installed_siblings() {
    let (Some(codename), Ok(_)) = (
        host_codename(),
        std::process::Command::new("/usr/bin/apt-get")
            .arg("--version")
            .output(),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs on Debian, which has apt-get"
        );
        eprintln!("\n*** SKIPPED packages_come_from_the_release_of_their_installed_siblings: not Debian ***\n");
        return;
    };
    let bpo = "1:10.0.2+ds-2~bpo12+1";
    let backports = format!("{codename}-backports");

    // The machine image's case: qemu-utils from backports, sources listing the release alone.
    let world = AptWorld::new(&codename, Some(bpo));
    let (code, out) = world.install("mtools qemu-system-x86", None);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("Inst qemu-system-x86 ({bpo} "))
            && out.contains(&format!("Inst qemu-system-common ({bpo} "))
            && out.contains("Inst mtools (4.0.33-1+b1 "),
        "{out}"
    );
    let source = world.backports_source().expect("backports enabled");
    assert!(
        source.contains("URIs: http://mirror.invalid/debian\n")
            && source.contains(&format!("Suites: {backports}\n")),
        "{source}"
    );
    assert_eq!(
        world.calls(),
        [
            "update -qq".to_string(),
            "update -qq".to_string(),
            "install -y -qq --no-install-recommends mtools".to_string(),
            format!("install -y -qq --no-install-recommends -t {backports} qemu-system-x86"),
        ],
        "{out}"
    );

    // Installing the two together from the release alone, as qemu.sh did, is what apt refuses.
    let world = AptWorld::new(&codename, Some(bpo));
    let (code, out) = world.install("mtools", None);
    assert_eq!(code, Some(0), "{out}");
    let refused = std::process::Command::new("/usr/bin/apt-get")
        .args(["install", "-s", "qemu-system-x86", "qemu-utils"])
        .env("APT_CONFIG", world.dir.path().join("apt.conf"))
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the world must reproduce apt's refusal: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(
        world.backports_source().is_none(),
        "mtools needs no backports"
    );

    // qemu-utils from the release: the release's qemu-system-x86, backports untouched; and one
    // `apt-get update` for two scripts sharing a stamp, as under tests/run.
    let world = AptWorld::new(&codename, Some("1:7.2+dfsg-7+b3"));
    let stamp = world.dir.path().join("stamp");
    let (code, out) = world.install("qemu-system-x86", Some(&stamp));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Inst qemu-system-x86 (1:7.2+dfsg-7+b3 "),
        "{out}"
    );
    let (code, out) = world.install("mtools", Some(&stamp));
    assert_eq!(code, Some(0), "{out}");
    assert!(world.backports_source().is_none(), "{out}");
    assert_eq!(
        world.calls(),
        [
            "update -qq",
            "install -y -qq --no-install-recommends qemu-system-x86",
            "install -y -qq --no-install-recommends mtools",
        ],
        "{out}"
    );

    // A qemu-utils newer than backports too: a clear error naming the packages, nothing installed.
    let world = AptWorld::new(&codename, Some("1:11.0+ds-1"));
    let (code, out) = world.install("qemu-system-x86", None);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("qemu-utils 1:11.0+ds-1")
            && out.contains(&format!("{backports} ({bpo})"))
            && out.contains("run this script again"),
        "{out}"
    );
    assert!(
        !world.calls().iter().any(|c| c.starts_with("install")),
        "{:?}",
        world.calls()
    );
}
