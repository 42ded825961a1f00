//! `berth-image ami` against moto: moto's EBS direct APIs (routed by the SigV4 service name
//! `ebs` on moto's single port) receive the blocks, moto's EC2 registers, tags and copies the
//! image. Everything is read back with boto3, an independent client: the snapshot's blocks
//! (ListSnapshotBlocks / GetSnapshotBlock) must be exactly the disk's non-zero blocks, and since
//! moto does not check block checksums, this test checks each one itself.
//!
//! moto's RegisterImage keeps only the name and description; the other attributes (block
//! devices, ENA, IMDS support, boot mode) are checked against berth-sim in
//! `image-builder/tests/ami_sim.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_e2e::agent::bin;
use berth_e2e::moto::Moto;

const BLOCK: usize = 512 * 1024;

/// A disk of 6 MiB + 100 KiB (13 blocks, the last partial): data in blocks 0, 5 and the
/// partial 12, a single byte at the end of block 9, zeros elsewhere.
fn disk(dir: &Path) -> PathBuf {
    let len = 6 * (1 << 20) + 100 * 1024;
    let mut bytes = vec![0u8; len];
    let mut seed = 0x6265_7274_6821_u64;
    for i in [0usize, 5, 12] {
        let end = ((i + 1) * BLOCK).min(len);
        for b in &mut bytes[i * BLOCK..end] {
            *b = noise(&mut seed);
        }
    }
    bytes[10 * BLOCK - 1] = 0x42;
    let p = dir.join("disk.raw");
    std::fs::write(&p, &bytes).unwrap();
    p
}

/// The disk's non-zero blocks (zero-padded to 512 KiB) as SHA-256 hex and base64, by index,
/// computed by python: independent of berth's own hashing.
fn expected_blocks(path: &Path) -> BTreeMap<u64, (String, String)> {
    const SCRIPT: &str = r#"
import sys, json, hashlib, base64
out = {}
with open(sys.argv[1], "rb") as f:
    i = 0
    while True:
        b = f.read(524288)
        if not b:
            break
        if any(b):
            b = b.ljust(524288, b"\0")
            d = hashlib.sha256(b).digest()
            out[i] = [d.hex(), base64.b64encode(d).decode()]
        i += 1
print(json.dumps(out))
"#;
    let out = python(SCRIPT, &[path.to_str().unwrap()], None);
    let map: BTreeMap<String, (String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    map.into_iter()
        .map(|(k, v)| (k.parse().unwrap(), v))
        .collect()
}

/// A small deterministic generator for the disk's data (xorshift64*).
fn noise(seed: &mut u64) -> u8 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8 | 1
}

fn python(script: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(Moto::python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the venv's python runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What boto3 reads from moto: the snapshot's blocks, the images and snapshots of the account.
const INSPECT: &str = r#"
import sys, json, hashlib, boto3
ep, region, snap = sys.argv[1:4]
kw = dict(endpoint_url=ep, region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing")
ebs = boto3.client("ebs", **kw)
ec2 = boto3.client("ec2", **kw)
out = {"blocks": {}, "images": [], "snapshots": []}
if snap:
    listed = ebs.list_snapshot_blocks(SnapshotId=snap)
    out["block_size"] = listed["BlockSize"]
    out["volume_size"] = listed["VolumeSize"]
    for b in listed["Blocks"]:
        got = ebs.get_snapshot_block(SnapshotId=snap, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
        data = got["BlockData"].read()
        out["blocks"][str(b["BlockIndex"])] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "len": len(data),
            "checksum": got.get("Checksum"),
            "algorithm": got.get("ChecksumAlgorithm"),
        }
tags = lambda r: {t["Key"]: t["Value"] for t in r.get("Tags", [])}
for i in ec2.describe_images(Owners=["self"])["Images"]:
    out["images"].append({"id": i["ImageId"], "name": i["Name"], "description": i.get("Description"), "tags": tags(i)})
for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]:
    out["snapshots"].append({"id": s["SnapshotId"], "state": s["State"], "tags": tags(s)})
print(json.dumps(out))
"#;

fn inspect(moto: &Moto, region: &str, snapshot: &str) -> serde_json::Value {
    let out = python(INSPECT, &[&moto.url, region, snapshot], None);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run(args: &[&str], home: &Path) -> Output {
    Command::new(bin("berth-image"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("berth-image runs")
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "berth-image ami failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn ami_through_moto_ebs_and_ec2() {
    let Some(moto) = Moto::start_plain_or_skip() else {
        return;
    };
    bin("berth-image");
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path());
    let expected = expected_blocks(&disk);
    assert_eq!(expected.keys().copied().collect::<Vec<_>>(), [0, 5, 9, 12]);
    let disk_arg = disk.to_str().unwrap().to_string();
    let run_id = format!("run-{}", std::process::id());
    let tag = format!("berth:run={run_id}");
    let args = [
        "ami",
        "--disk",
        &disk_arg,
        "--name",
        "berth-moto-1",
        "--description",
        "berth on moto",
        "--region",
        "us-east-1",
        "--regions",
        "us-west-2",
        "--ec2-endpoint",
        &moto.url,
        "--ebs-endpoint",
        &moto.url,
        "--tag",
        &tag,
        "--parallel",
        "4",
    ];
    let o = ok_json(&run(&args, dir.path()));
    assert_eq!(o["existed"], false);
    assert_eq!(o["upload"]["blocks_uploaded"], 4);
    assert_eq!(o["upload"]["blocks_skipped_zero"], 9);
    let image_id = o["image_id"].as_str().unwrap().to_string();
    let snapshot_id = o["snapshot_id"].as_str().unwrap().to_string();

    let seen = inspect(&moto, "us-east-1", &snapshot_id);
    // Exactly the non-zero blocks, each with the right bytes and the right checksum.
    let blocks = seen["blocks"].as_object().unwrap();
    let indexes: Vec<u64> = blocks.keys().map(|k| k.parse().unwrap()).collect();
    let mut sorted = indexes.clone();
    sorted.sort();
    assert_eq!(sorted, expected.keys().copied().collect::<Vec<_>>());
    for (i, (sha_hex, sha_b64)) in &expected {
        let b = &blocks[&i.to_string()];
        assert_eq!(b["len"], BLOCK, "block {i}");
        assert_eq!(b["sha256"], sha_hex.as_str(), "block {i} bytes");
        assert_eq!(b["checksum"], sha_b64.as_str(), "block {i} checksum");
        assert_eq!(b["algorithm"], "SHA256", "block {i}");
    }
    assert_eq!(seen["volume_size"], 1);
    // What moto keeps of the image: name, description, tags; the snapshot and its tags.
    let image = seen["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == image_id.as_str())
        .expect("moto lists the image");
    assert_eq!(image["name"], "berth-moto-1");
    assert_eq!(image["description"], "berth on moto");
    assert_eq!(image["tags"]["berth:run"], run_id.as_str());
    let snap = seen["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == snapshot_id.as_str())
        .expect("moto lists the snapshot");
    assert_eq!(snap["state"], "completed");
    assert_eq!(snap["tags"]["berth:run"], run_id.as_str());
    // The copy in us-west-2.
    let copy_id = o["copies"]["us-west-2"].as_str().unwrap().to_string();
    let west = inspect(&moto, "us-west-2", "");
    let copy = west["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == copy_id.as_str())
        .expect("moto lists the copy");
    assert_eq!(copy["name"], "berth-moto-1");
    assert_eq!(copy["tags"]["berth:run"], run_id.as_str());

    // Second run: reported, nothing changed in either region.
    let requests = moto.request_lines().len();
    let o2 = ok_json(&run(&args, dir.path()));
    assert_eq!(o2["existed"], true);
    assert_eq!(o2["image_id"], image_id.as_str());
    assert_eq!(o2["copies"]["us-west-2"], copy_id.as_str());
    let after = moto.requests_since(requests);
    assert!(
        after
            .iter()
            .all(|l| !l.contains("PUT ") && !l.contains("/snapshots")),
        "{after:#?}"
    );
    let seen2 = inspect(&moto, "us-east-1", "");
    assert_eq!(seen2["images"], seen["images"]);
    assert_eq!(seen2["snapshots"], seen["snapshots"]);
    assert_eq!(inspect(&moto, "us-west-2", "")["images"], west["images"]);
}
