//! User-data as EC2 users write it for cloud-init, Ignition, nodeadm and berth, served raw by the
//! emulated IMDS to the real `berth-agent`: what berth reads, what it leaves with a note, what it
//! refuses (exit 3, nothing on the host changed), and that no user-data content reaches its
//! output or its state.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_e2e::agent::{bin, fedora_root, tree, Region};

/// A marker standing for a password or token in user-data: it must never leave it.
const SECRET: &str = "Zq7-hunter2-s3cret-token";

/// The seed cluster, fed-minion's user-data set to `raw` (bytes, as RunInstances takes them).
fn seed_with_user_data(raw: &[u8]) -> Region {
    Region::seed_with(|m| m.user_data_base64 = Some(base64(raw)))
}

fn pipe(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd} failed");
    out.stdout
}

fn base64(raw: &[u8]) -> String {
    String::from_utf8(pipe("base64", &["-w0"], raw)).unwrap()
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    pipe("gzip", &["-9", "-c", "-n"], raw)
}

fn run(region: &Region, root: &Path) -> Output {
    region.agent("fed-minion", root, &["run", "--once", "--no-host-actions"])
}

fn status(root: &Path) -> Output {
    Command::new(bin("berth-agent"))
        .args(["status", "--root"])
        .arg(root)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every byte berth wrote or printed: stdout and stderr of the runs, and every file under the
/// root, the state directory included.
fn assert_secret_kept(outputs: &[&Output], root: &Path) {
    for o in outputs {
        assert!(
            !text(&o.stdout).contains(SECRET),
            "stdout:\n{}",
            text(&o.stdout)
        );
        assert!(
            !text(&o.stderr).contains(SECRET),
            "stderr:\n{}",
            text(&o.stderr)
        );
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(!text(&bytes).contains(SECRET), "{} holds it", p.display());
            }
        }
    }
}

/// User-data that is not berth's: the node converges from its tags, and `status` says what was
/// left to whom.
fn assert_left_alone(raw: &[u8], note: &str) {
    let region = seed_with_user_data(raw);
    let root = fedora_root();
    let out = run(&region, root.path());
    assert_eq!(out.status.code(), Some(0), "{note}: {}", text(&out.stderr));
    assert!(
        root.path().join("etc/kubernetes/kubelet").exists(),
        "{note}"
    );
    assert!(
        text(&out.stderr).contains(note),
        "{note} not in:\n{}",
        text(&out.stderr)
    );
    let st = status(root.path());
    assert_eq!(st.status.code(), Some(0));
    assert!(
        text(&st.stdout).contains(note),
        "{note} not in:\n{}",
        text(&st.stdout)
    );
    let plan = region.agent("fed-minion", root.path(), &["plan", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    assert!(
        v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains(note)),
        "{note} not in the plan's notes: {v}"
    );
    assert_secret_kept(&[&out, &st, &plan], root.path());
}

/// User-data refused: exit 3, the reason on stderr, no file of the host changed, no state.
fn assert_refused(raw: &[u8], reason: &str) -> Output {
    let region = seed_with_user_data(raw);
    let root = fedora_root();
    let before = tree(root.path());
    let out = run(&region, root.path());
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(reason),
        "{reason:?} not in:\n{}",
        text(&out.stderr)
    );
    assert_eq!(
        tree(root.path()),
        before,
        "refused user-data changed the host"
    );
    assert!(!root.path().join("var/lib/berth/current").exists());
    let plan = region.agent("fed-minion", root.path(), &["plan"]);
    assert_eq!(plan.status.code(), Some(3));
    assert_secret_kept(&[&out, &plan], root.path());
    out
}

/// The cloud-config of the Fedora Atomic getting-started guide.
fn atomic_cloud_config() -> String {
    format!(
        "#cloud-config\npassword: {SECRET}\nssh_pwauth: True\nchpasswd: {{ expire: False }}\n\n\
         ssh_authorized_keys:\n  - ssh-rsa AAAAB3NzaC1yc2E{SECRET} user@example\n"
    )
}

#[test]
fn atomic_cloud_config_is_left_to_cloud_init() {
    assert_left_alone(
        atomic_cloud_config().as_bytes(),
        "#cloud-config without a `berth:` section; left to cloud-init",
    );
}

#[test]
fn cloud_config_berth_section_configures_the_node() {
    let cc = format!(
        "{}berth:\n  kubernetes:\n    log_level: 3\n",
        atomic_cloud_config()
    );
    let region = seed_with_user_data(cc.as_bytes());
    let root = fedora_root();
    let out = run(&region, root.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config = std::fs::read_to_string(root.path().join("etc/kubernetes/config")).unwrap();
    assert!(config.contains("KUBE_LOG_LEVEL=\"--v=3\""), "{config}");
    let st = status(root.path());
    assert!(text(&st.stdout).contains("berth read its `berth:` section"));
    assert_secret_kept(&[&out, &st], root.path());

    // A mistake in berth's section is berth's: refused with its place in the document.
    let bad = format!(
        "{}berth:\n  kubernetes:\n    log_levle: 3\n",
        atomic_cloud_config()
    );
    assert_refused(
        bad.as_bytes(),
        "user-data line 10, column 5: unknown key `berth.kubernetes.log_levle`; did you mean \
         `berth.kubernetes.log_level`?",
    );
}

#[test]
fn scripts_boothooks_includes_archives_and_ignition_are_left_alone() {
    for (doc, note) in [
        (
            format!("#!/bin/bash\necho 'root:{SECRET}' | chpasswd\n"),
            "user-data is a script (#!)",
        ),
        (
            format!("#cloud-boothook\n#!/bin/sh\necho {SECRET} > /etc/token\n"),
            "user-data is a cloud-init boothook (#cloud-boothook)",
        ),
        (
            format!("#include\nhttps://config.example.invalid/{SECRET}\n"),
            "user-data is a cloud-init include list (#include)",
        ),
        (
            format!("#cloud-config-archive\n- type: text/x-shellscript\n  content: {SECRET}\n"),
            "user-data is a cloud-config archive (#cloud-config-archive)",
        ),
        (
            format!(
                "{{\"ignition\": {{\"version\": \"3.4.0\"}}, \"passwd\": {{\"users\": \
                 [{{\"name\": \"core\", \"passwordHash\": \"{SECRET}\"}}]}}}}"
            ),
            "user-data is an Ignition config",
        ),
        (
            format!("<powershell>\n$token = '{SECRET}'\n</powershell>\n"),
            "user-data is an EC2Launch PowerShell script",
        ),
    ] {
        assert_left_alone(doc.as_bytes(), note);
    }
}

#[test]
fn gzip_user_data_is_read() {
    let raw = gzip(b"kubernetes:\n  log_level: 2\n");
    let region = seed_with_user_data(&raw);
    let root = fedora_root();
    let out = run(&region, root.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config = std::fs::read_to_string(root.path().join("etc/kubernetes/config")).unwrap();
    assert!(config.contains("KUBE_LOG_LEVEL=\"--v=2\""), "{config}");

    // A gzip'd script is still a script.
    assert_left_alone(
        &gzip(format!("#!/bin/sh\necho {SECRET}\n").as_bytes()),
        "user-data is a script (#!)",
    );
}

#[test]
fn gzip_bomb_is_refused_and_changes_nothing() {
    // 64 MiB of spaces compress to about 64 KiB at -9; 8 MiB fits under EC2's 16 KiB.
    let bomb = gzip(&vec![b' '; 8 << 20]);
    assert!(bomb.len() <= 16 * 1024, "{} bytes", bomb.len());
    assert_refused(
        &bomb,
        "user-data: gzip content expands past 262144 bytes (the bound on decompressed user-data)",
    );
}

#[test]
fn mime_multipart_contributes_only_berths_part() {
    let mime = format!(
        "Content-Type: multipart/mixed; boundary=\"==BOUNDARY==\"\nMIME-Version: 1.0\n\n\
         --==BOUNDARY==\nContent-Type: text/cloud-config; charset=\"us-ascii\"\n\n{}\n\
         --==BOUNDARY==\nContent-Type: application/x-berth-config\n\nkubernetes:\n  log_level: 4\n\n\
         --==BOUNDARY==\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\n\
         Content-Transfer-Encoding: base64\n\n{}\n--==BOUNDARY==--\n",
        atomic_cloud_config(),
        base64(format!("#!/bin/sh\necho {SECRET}\n").as_bytes()),
    );
    let region = seed_with_user_data(mime.as_bytes());
    let root = fedora_root();
    let out = run(&region, root.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config = std::fs::read_to_string(root.path().join("etc/kubernetes/config")).unwrap();
    assert!(config.contains("KUBE_LOG_LEVEL=\"--v=4\""), "{config}");
    let st = text(&status(root.path()).stdout);
    assert!(
        st.contains("user-data part 1 (text/cloud-config) is not berth's"),
        "{st}"
    );
    assert!(
        st.contains("user-data part 3 (text/x-shellscript) is not berth's"),
        "{st}"
    );
    assert_secret_kept(&[&out], root.path());

    // berth's part with a mistake is refused, naming the part.
    assert_refused(
        mime.replace("log_level: 4", "log_level: [4").as_bytes(),
        "user-data part 2 line ",
    );
}

#[test]
fn refused_user_data_is_not_quoted() {
    // A string where berth wants a mapping, a block scalar holding a secret.
    assert_refused(
        format!("kubernetes: |\n  {SECRET}\n").as_bytes(),
        "user-data line 1, column 13: kubernetes: invalid type: a string, expected",
    );
    // Malformed YAML around a secret.
    assert_refused(
        format!("role: [minion\ntoken: {SECRET}\n").as_bytes(),
        "user-data line ",
    );
    // A value berth needs, wrong and long: quoted cut to 64 characters.
    let long = format!("role: {}{SECRET}\n", "x".repeat(100));
    let out = assert_refused(long.as_bytes(), "`role` = \"xxxxxxxx");
    assert!(text(&out.stderr).len() < 1000, "{}", text(&out.stderr));
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    // Raw, at EC2's size limit: 16 KiB of `[`.
    assert_refused(
        &vec![b'['; 16 * 1024],
        "user-data line 1, column 64: nested more than 64 levels deep",
    );
    // gzip'd: 256 KiB of nesting in a few hundred bytes, under a key.
    let mut doc = b"role: ".to_vec();
    doc.extend(std::iter::repeat_n(b'[', 256 * 1024 - 8));
    assert_refused(&gzip(&doc), "nested more than 64 levels deep");
    // Over EC2's size limit (1 MiB of `[`): refused by size.
    assert_refused(
        &vec![b'['; 1 << 20],
        "user-data is 1048576 bytes; berth reads at most 16384",
    );
}

#[test]
fn long_tag_value_is_quoted_cut() {
    // EC2 (and so berth-sim) caps tag values at 256 characters; berth cuts what it quotes to 64
    // whatever the length (the unit tests of agent/src/config.rs use 1 MiB).
    let region = Region::seed_with(|m| {
        m.tags.insert("berth:cluster".into(), "Q".repeat(256));
    });
    let root = fedora_root();
    let out = run(&region, root.path());
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "`cluster` = \"{}… (256 bytes in all)\"",
            "Q".repeat(64)
        )),
        "{err}"
    );
}
