//! AMI upload throughput: a 256 MiB raw disk, mostly zeros with random data in regions, uploaded to berth-sim's EBS direct APIs (SigV4 and every block checksum verified)
//! with 1, 4 and 16 parallel PutSnapshotBlock requests.
//!
//! `cargo bench -p berth-image --bench ami_upload` prints, per parallelism, the time, the MiB/s
//! sent, the disk MiB/s covered (zero blocks count: they are read and skipped) and the number of
//! blocks skipped as all-zero. Client and server share this process and the machine's cores, so
//! the figures bound what the client can do, not what EBS does.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use berth_ec2::{Credentials, RetryPolicy};
use berth_image::ami::{self, Disk, ProgressMode};
use berth_image::ebs::{EbsClient, StartSnapshot, BLOCK_SIZE};
use berth_sim::{ClusterSpec, CredentialsSpec, Sim};

const DISK: u64 = 256 << 20;
const MIB: f64 = (1 << 20) as f64;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(DISK).unwrap();
    // Like a fresh OS disk: 8 MiB at the start (GPT, ESP), eight 6 MiB extents (kernel,
    // initramfs, /usr files) and 64 scattered blocks holding 4 KiB each (filesystem metadata).
    let mut seed = 0x0123_4567_89ab_cdefu64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let mut data_blocks = std::collections::BTreeSet::new();
    let mut write_block = |i: u64, data: &[u8]| {
        f.write_all_at(data, i * BLOCK_SIZE as u64).unwrap();
        data_blocks.insert(i);
    };
    for i in 0..16 {
        write_block(i, &noise(BLOCK_SIZE));
    }
    for extent in 0..8u64 {
        let first = 40 + extent * 60;
        for i in first..first + 12 {
            write_block(i, &noise(BLOCK_SIZE));
        }
    }
    for k in 0..64u64 {
        write_block(9 + k * 7 + (k % 3), &noise(4096));
    }
    drop(f);
    let data = data_blocks.len() as u64;
    let total = DISK / BLOCK_SIZE as u64;
    println!(
        "disk: {} MiB, {total} blocks of 512 KiB, {data} with data ({:.0} MiB), {} all-zero",
        DISK >> 20,
        data as f64 * BLOCK_SIZE as f64 / MIB,
        total - data
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let creds = Credentials {
            access_key_id: "AKIDBENCH".into(),
            secret_access_key: "bench-secret".into(),
            session_token: None,
            expiration: None,
        };
        let sim = Sim::start(ClusterSpec {
            credentials: vec![CredentialsSpec {
                access_key_id: creds.access_key_id.clone(),
                secret_access_key: creds.secret_access_key.clone(),
                session_token: None,
                expiration: None,
            }],
            ..ClusterSpec::default()
        })
        .await
        .unwrap();
        let endpoint = url::Url::parse(&sim.ec2_url()).unwrap();
        let provider = ami::static_provider(creds.clone());
        let disk = Disk::open(&path).unwrap();
        println!("parallel  seconds  sent MiB/s  disk MiB/s  uploaded  skipped-zero");
        for parallel in [1usize, 4, 16] {
            let client = Arc::new(EbsClient::new(
                endpoint.clone(),
                "us-east-1".into(),
                RetryPolicy::ec2_discovery(),
            ));
            let started = client
                .start_snapshot(
                    &creds,
                    &StartSnapshot {
                        volume_size_gib: disk.volume_size_gib(),
                        description: "bench",
                        tags: &[],
                        client_token: &format!("bench-{parallel}"),
                        timeout_minutes: 60,
                    },
                )
                .await
                .unwrap();
            let t = Instant::now();
            let (uploaded, skipped, bytes) = ami::upload_blocks(
                client.clone(),
                &provider,
                &disk,
                &started.snapshot_id,
                parallel,
                ProgressMode::Quiet,
            )
            .await
            .unwrap();
            client
                .complete_snapshot(&creds, &started.snapshot_id, uploaded)
                .await
                .unwrap();
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(uploaded, data);
            assert_eq!(skipped, total - data);
            println!(
                "{parallel:>8}  {secs:>7.2}  {:>10.1}  {:>10.1}  {uploaded:>8}  {skipped:>12}",
                bytes as f64 / MIB / secs,
                DISK as f64 / MIB / secs
            );
        }
        sim.shutdown().await;
    });
}
