//! `berth-image ami` (the real binary) against berth-sim's EC2 endpoint and EBS direct APIs,
//! which verify every SigV4 signature and every block checksum and record every attribute
//! RegisterImage was given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use berth_image::ebs::{self, EbsClient, StartSnapshot, BLOCK_SIZE};
use berth_sim::{ClusterSpec, CredentialsSpec, InstanceSpec, Sim};
use sha2::{Digest, Sha256};

const KEY_ID: &str = "AKIDBERTHIMAGETEST";
const SECRET: &str = "berth-image-test-secret-key";

fn spec(region: &str) -> ClusterSpec {
    ClusterSpec {
        region: region.into(),
        credentials: vec![CredentialsSpec {
            access_key_id: KEY_ID.into(),
            secret_access_key: SECRET.into(),
            session_token: None,
            expiration: None,
        }],
        ..ClusterSpec::default()
    }
}

/// A sparse raw disk of `len` bytes: `data` blocks hold random bytes, `sparse` blocks hold one
/// non-zero byte at their very end (so a zero check that stops early would miss it), the rest
/// is zeros.
fn synthetic_disk(dir: &Path, len: u64, data: &[u64], sparse: &[u64]) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join("disk.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    for &i in data {
        let off = i * BLOCK_SIZE as u64;
        let n = (len - off).min(BLOCK_SIZE as u64) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| fastrand::u8(..)).collect();
        f.write_all_at(&bytes, off).unwrap();
    }
    for &i in sparse {
        let end = ((i + 1) * BLOCK_SIZE as u64).min(len);
        f.write_all_at(&[0x5a], end - 1).unwrap();
    }
    path
}

/// The disk's non-zero blocks, zero-padded to 512 KiB, by index.
fn nonzero_blocks(path: &Path) -> BTreeMap<u64, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = BTreeMap::new();
    for (i, chunk) in bytes.chunks(BLOCK_SIZE).enumerate() {
        if chunk.iter().any(|b| *b != 0) {
            let mut block = chunk.to_vec();
            block.resize(BLOCK_SIZE, 0);
            out.insert(i as u64, block);
        }
    }
    out
}

async fn berth_image(args: &[&str], env: &[(&str, &str)], home: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth-image"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        // Never look for an instance role at the real link-local address from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("berth-image runs")
}

fn creds_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ]
}

fn outcome(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "berth-image ami failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not the JSON outcome ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ami_args<'a>(disk: &'a str, name: &'a str, sim: &'a str) -> Vec<&'a str> {
    vec![
        "ami",
        "--disk",
        disk,
        "--name",
        name,
        "--region",
        "us-east-1",
        "--ec2-endpoint",
        sim,
        "--ebs-endpoint",
        sim,
        "--boot-mode",
        "uefi-preferred",
        "--tag",
        "berth:image=test",
        "--tag",
        "team=os",
        "--parallel",
        "4",
    ]
}

fn count(sim: &Sim, action: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.action.as_deref() == Some(action))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_exactly_the_nonzero_blocks_and_registers_every_attribute() {
    let dir = tempfile::tempdir().unwrap();
    // 9.25 MiB: 19 blocks, the last one partial; blocks 0, 3, 4 and the partial last hold
    // data, block 7 one byte at its end; the other 14 are zeros.
    let len = 9 * (1 << 20) + 256 * 1024;
    let disk = synthetic_disk(dir.path(), len, &[0, 3, 4, 18], &[7]);
    let expected = nonzero_blocks(&disk);
    assert_eq!(
        expected.keys().copied().collect::<Vec<_>>(),
        [0, 3, 4, 7, 18]
    );
    let sim = Sim::start(spec("us-east-1")).await.unwrap();
    let url = sim.ec2_url();

    let out = berth_image(
        &ami_args(disk.to_str().unwrap(), "berth-test-1", &url),
        &creds_env(),
        dir.path(),
    )
    .await;
    let o = outcome(&out);
    assert_eq!(o["existed"], false);
    assert_eq!(o["upload"]["blocks_total"], 19);
    assert_eq!(o["upload"]["blocks_uploaded"], 5);
    assert_eq!(o["upload"]["blocks_skipped_zero"], 14);
    let image_id = o["image_id"].as_str().unwrap();
    let snapshot_id = o["snapshot_id"].as_str().unwrap();

    // The snapshot holds exactly the disk's non-zero blocks, with their SHA-256 checksums.
    let blocks = sim
        .snapshot_blocks(snapshot_id)
        .expect("the snapshot exists");
    assert_eq!(blocks, expected);
    let snap = sim
        .snapshots()
        .into_iter()
        .find(|s| s.id == snapshot_id)
        .unwrap();
    for (i, b) in &snap.blocks {
        let sum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&expected[i]));
        assert_eq!(b.checksum, sum, "block {i}");
    }
    assert_eq!(snap.status, "completed");
    assert_eq!(snap.volume_size_gib, 1);
    assert_eq!(snap.changed_blocks_count, Some(5));
    assert_eq!(snap.tags["team"], "os");
    assert_eq!(snap.tags["berth:image"], "test");
    // No block was sent twice, every request was signed (the sim verified each signature).
    assert_eq!(count(&sim, "PutSnapshotBlock"), 5);
    assert!(sim.requests().iter().all(|r| r.signed && r.status < 300));

    let images = sim.images();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.id, image_id);
    assert_eq!(img.name, "berth-test-1");
    assert_eq!(img.region, "us-east-1");
    assert_eq!(img.architecture.as_deref(), Some("x86_64"));
    assert_eq!(img.virtualization_type.as_deref(), Some("hvm"));
    assert_eq!(img.root_device_name.as_deref(), Some("/dev/xvda"));
    assert_eq!(img.ena_support, Some(true));
    assert_eq!(img.sriov_net_support.as_deref(), Some("simple"));
    assert_eq!(img.imds_support.as_deref(), Some("v2.0"));
    assert_eq!(img.boot_mode.as_deref(), Some("uefi-preferred"));
    assert_eq!(img.block_devices.len(), 1);
    let root = &img.block_devices[0];
    assert_eq!(root.device_name, "/dev/xvda");
    assert_eq!(root.snapshot_id.as_deref(), Some(snapshot_id));
    assert_eq!(root.volume_type.as_deref(), Some("gp3"));
    assert_eq!(root.delete_on_termination, Some(true));
    assert_eq!(root.volume_size_gib, Some(1));
    assert_eq!(img.tags["team"], "os");
    assert_eq!(img.tags["berth:image"], "test");

    // A second run with the same name changes nothing.
    let before = (sim.images(), sim.snapshots());
    let n = sim.requests().len();
    let out = berth_image(
        &ami_args(disk.to_str().unwrap(), "berth-test-1", &url),
        &creds_env(),
        dir.path(),
    )
    .await;
    let o2 = outcome(&out);
    assert_eq!(o2["existed"], true);
    assert_eq!(o2["image_id"], image_id);
    assert_eq!(o2["snapshot_id"], snapshot_id);
    assert_eq!((sim.images(), sim.snapshots()), before);
    let actions: Vec<String> = sim.requests()[n..]
        .iter()
        .filter_map(|r| r.action.clone())
        .collect();
    assert_eq!(actions, ["DescribeImages"]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_image_failure_leaves_no_snapshot_behind() {
    let dir = tempfile::tempdir().unwrap();
    let disk = synthetic_disk(dir.path(), 4 << 20, &[1, 2], &[]);
    let sim = Sim::start(spec("us-east-1")).await.unwrap();
    let url = sim.ec2_url();
    sim.fail_action("RegisterImage", 1, 400, "InvalidParameterValue");
    let out = berth_image(
        &ami_args(disk.to_str().unwrap(), "berth-fails", &url),
        &creds_env(),
        dir.path(),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RegisterImage"), "{stderr}");
    assert!(stderr.contains("was deleted"), "{stderr}");
    // The blocks went up, the snapshot was made, then deleted.
    assert_eq!(count(&sim, "PutSnapshotBlock"), 2);
    assert_eq!(count(&sim, "DeleteSnapshot"), 1);
    assert!(sim.snapshots().is_empty(), "{:?}", sim.snapshots());
    assert!(sim.images().is_empty());

    // Throttled and failing block uploads are retried; the run then succeeds.
    sim.fail_action("PutSnapshotBlock", 3, 503, "InternalServerException");
    let out = berth_image(
        &ami_args(disk.to_str().unwrap(), "berth-fails", &url),
        &creds_env(),
        dir.path(),
    )
    .await;
    let o = outcome(&out);
    assert_eq!(o["upload"]["blocks_uploaded"], 2);
    assert_eq!(sim.snapshots().len(), 1);
    assert_eq!(sim.images().len(), 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_to_another_region_once() {
    let dir = tempfile::tempdir().unwrap();
    let disk = synthetic_disk(dir.path(), 2 << 20, &[0], &[]);
    let east = Sim::start(spec("us-east-1")).await.unwrap();
    let west = Sim::start_peer(spec("us-west-2"), &east).await.unwrap();
    let west_endpoint = format!("us-west-2={}", west.ec2_url());
    let url = east.ec2_url();
    let mut args = ami_args(disk.to_str().unwrap(), "berth-copied", "");
    args[8] = &url;
    args[10] = &url;
    args.extend(["--regions", "us-west-2", "--ec2-endpoint", &west_endpoint]);
    let o = outcome(&berth_image(&args, &creds_env(), dir.path()).await);
    let copy_id = o["copies"]["us-west-2"].as_str().unwrap().to_string();
    let images = east.images();
    assert_eq!(images.len(), 2);
    let source = images.iter().find(|i| i.region == "us-east-1").unwrap();
    let copy = images.iter().find(|i| i.region == "us-west-2").unwrap();
    assert_eq!(copy.id, copy_id);
    assert_eq!(copy.name, "berth-copied");
    assert_eq!(copy.source_image_id.as_deref(), Some(source.id.as_str()));
    assert_eq!(copy.source_region.as_deref(), Some("us-east-1"));
    assert_eq!(copy.ena_support, Some(true));
    assert_eq!(copy.imds_support.as_deref(), Some("v2.0"));
    assert_eq!(copy.tags["team"], "os");
    assert_eq!(count(&west, "CopyImage"), 1);

    // Rerun: both found by name, nothing copied again.
    let o = outcome(&berth_image(&args, &creds_env(), dir.path()).await);
    assert_eq!(o["existed"], true);
    assert_eq!(o["copies"]["us-west-2"], copy_id.as_str());
    assert_eq!(count(&west, "CopyImage"), 1);
    assert_eq!(east.images().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_the_shared_file_and_the_instance_role() {
    let dir = tempfile::tempdir().unwrap();
    let disk = synthetic_disk(dir.path(), 1 << 20, &[0], &[]);
    let mut s = spec("us-east-1");
    let mut node = InstanceSpec::new("builder", "172.30.0.20".parse().unwrap());
    node.iam_role = Some("image-builder".into());
    s.instances.push(node);
    let sim = Sim::start(s).await.unwrap();
    let url = sim.ec2_url();

    // The shared credentials file, profile chosen by AWS_PROFILE.
    std::fs::create_dir(dir.path().join(".aws")).unwrap();
    std::fs::write(
        dir.path().join(".aws/credentials"),
        format!("[default]\naws_access_key_id = AKIDWRONG\naws_secret_access_key = wrong\n[build]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    let o = outcome(
        &berth_image(
            &ami_args(disk.to_str().unwrap(), "berth-from-file", &url),
            &[("AWS_PROFILE", "build")],
            dir.path(),
        )
        .await,
    );
    assert_eq!(o["existed"], false);

    // The default profile holds a key the region does not know: refused, nothing left behind.
    let out = berth_image(
        &ami_args(disk.to_str().unwrap(), "berth-wrong-key", &url),
        &[],
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AuthFailure"));
    assert_eq!(sim.snapshots().len(), 1);

    // No environment, no file: the instance role through IMDS.
    let empty_home = tempfile::tempdir().unwrap();
    let imds = sim.imds_url("builder").unwrap();
    let mut args = ami_args(disk.to_str().unwrap(), "berth-from-role", &url);
    args.extend(["--imds-endpoint", &imds]);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth-image"));
    cmd.args(&args)
        .env_clear()
        .env("HOME", empty_home.path())
        .kill_on_drop(true);
    let o = outcome(&cmd.output().await.unwrap());
    assert_eq!(o["existed"], false);
    // Signed with the role's session token.
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.action.as_deref() == Some("RegisterImage") && r.token_present));
    assert_eq!(sim.images().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_input_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let qcow = dir.path().join("disk.qcow2");
    std::fs::write(&qcow, b"QFI\xfb\0\0\0\x03rest").unwrap();
    let sim = Sim::start(spec("us-east-1")).await.unwrap();
    let url = sim.ec2_url();
    let out = berth_image(
        &ami_args(qcow.to_str().unwrap(), "berth-qcow", &url),
        &creds_env(),
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qcow2"));
    let raw = synthetic_disk(dir.path(), 1 << 20, &[0], &[]);
    for (name, tag) in [("x", "a=b"), ("berth-ok", "aws:reserved=1")] {
        let mut args = ami_args(raw.to_str().unwrap(), name, &url);
        args.extend(["--tag", tag]);
        let out = berth_image(&args, &creds_env(), dir.path()).await;
        assert_eq!(out.status.code(), Some(3), "{name} {tag}");
    }
    assert!(sim.requests().is_empty());
}

/// A GPT disk of 8 MiB with partitions of the given types, one MiB each.
fn gpt_disk(path: &Path, types: &[berth_image::disk::gpt::Guid]) {
    use berth_image::disk::gpt::{self, Guid, Partition};
    let len = 8u64 << 20;
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    let parts: Vec<Partition> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let first = (i as u64 + 1) * 2048;
            Partition {
                type_guid: *t,
                guid: Guid([i as u8 + 1; 16]),
                first_lba: first,
                last_lba: first + 2047,
                name: format!("p{i}"),
            }
        })
        .collect();
    gpt::write(&mut f, len, Guid([0xab; 16]), &parts).unwrap();
}

/// An AMI whose boot mode the disk cannot boot in would launch instances that never come up:
/// refused, with the fix named, before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_boot_mode_the_disk_cannot_boot() {
    use berth_image::disk::gpt::types::{BIOS_BOOT, ESP, ROOT_X86_64, XBOOTLDR};
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(spec("us-east-1")).await.unwrap();
    let url = sim.ec2_url();
    let uefi = dir.path().join("uefi.raw");
    gpt_disk(&uefi, &[ESP, XBOOTLDR, ROOT_X86_64]);
    let bios = dir.path().join("bios.raw");
    gpt_disk(&bios, &[BIOS_BOOT, ROOT_X86_64]);
    let cases = [
        (&uefi, "legacy-bios", "no BIOS boot partition"),
        (&bios, "uefi", "no EFI system partition"),
        (&bios, "uefi-preferred", "no EFI system partition"),
    ];
    for (disk, mode, want) in cases {
        let mut args = ami_args(disk.to_str().unwrap(), "berth-boot-mode", &url);
        let i = args.iter().position(|a| *a == "--boot-mode").unwrap();
        args[i + 1] = mode;
        let out = berth_image(&args, &creds_env(), dir.path()).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{mode}: {err}");
        assert!(err.contains(&format!("--boot-mode {mode}")), "{err}");
        assert!(err.contains(want), "{mode}: {err}");
    }
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
    sim.shutdown().await;
}

/// berth-sim checks each block the way EBS does; moto does not, so this is where a wrong
/// checksum must be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_refuses_a_block_whose_checksum_is_wrong() {
    let sim = Sim::start(spec("us-east-1")).await.unwrap();
    let client = EbsClient::new(
        url::Url::parse(&sim.ec2_url()).unwrap(),
        "us-east-1".into(),
        berth_ec2::RetryPolicy::ec2_discovery(),
    );
    let creds = berth_ec2::Credentials {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
        session_token: None,
        expiration: None,
    };
    let started = client
        .start_snapshot(
            &creds,
            &StartSnapshot {
                volume_size_gib: 1,
                description: "",
                tags: &[],
                client_token: "t-1",
                timeout_minutes: 60,
            },
        )
        .await
        .unwrap();
    let block = bytes::Bytes::from(vec![7u8; BLOCK_SIZE]);
    let wrong = ebs::checksum(&[1u8; BLOCK_SIZE]);
    let err = client
        .put_block(&creds, &started.snapshot_id, 0, block.clone(), &wrong)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some("ValidationException"), "{err}");
    assert_eq!(err.reason(), Some("INVALID_CHECKSUM"), "{err}");
    let short = bytes::Bytes::from(vec![7u8; 1000]);
    let err = client
        .put_block(
            &creds,
            &started.snapshot_id,
            0,
            short.clone(),
            &ebs::checksum(&short),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some("INVALID_BLOCK"), "{err}");
    client
        .put_block(
            &creds,
            &started.snapshot_id,
            0,
            block.clone(),
            &ebs::checksum(&block),
        )
        .await
        .unwrap();
    // The count must match what was written.
    assert!(client
        .complete_snapshot(&creds, &started.snapshot_id, 2)
        .await
        .is_err());
    client
        .complete_snapshot(&creds, &started.snapshot_id, 1)
        .await
        .unwrap();
    // Once completed, it reads back through ListSnapshotBlocks / GetSnapshotBlock.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let listed = client
        .list_blocks(&creds, &started.snapshot_id)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let read = client
        .get_block(&creds, &started.snapshot_id, 0, &listed[0].token)
        .await
        .unwrap();
    assert_eq!(read.data, block.to_vec());
    assert_eq!(
        read.checksum.as_deref(),
        Some(ebs::checksum(&block).as_str())
    );
}
