//! Discovery + plan for clusters of 10 to 5000 instances: parse DescribeInstances XML as EC2 sends
//! it (one page of up to 1000 instances per request), build the membership, plan the master's
//! files and units. The target is 5000 instances under 50 ms.
//!
//! `shared-name/N`: the membership of N instances that all carry one `Name` tag, which a peer
//! of the security group may do on purpose: one keeps the name, the others fall back to their
//! DNS names, with one note in all (the rule is O(n log n); 50,000 of them must stay well under
//! a second).

use std::collections::{BTreeMap, BTreeSet};

use berth_agent::config::{Config, Role};
use berth_agent::discovery::{self, Me};
use berth_agent::plan::{self, HostFiles, Inputs};
use berth_agent::profile::Profile;
use berth_ec2::{Identity, Instance};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn page(first: usize, count: usize, next: Option<&str>) -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><reservationSet>",
    );
    for n in first..first + count {
        let role = if n == 0 { "master" } else { "minion" };
        let ip = format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256);
        x.push_str(&format!(
            "<item><reservationId>r-{n:017x}</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet><item>\
<instanceId>i-{n:017x}</instanceId><imageId>ami-0123456789abcdef0</imageId><instanceState><code>16</code><name>running</name></instanceState>\
<privateDnsName>ip-{dash}.ec2.internal</privateDnsName><dnsName/><instanceType>t3.medium</instanceType>\
<placement><availabilityZone>us-east-1a</availabilityZone></placement><subnetId>subnet-1</subnetId><vpcId>vpc-1</vpcId>\
<privateIpAddress>{ip}</privateIpAddress><groupSet><item><groupId>sg-1</groupId><groupName>cluster</groupName></item></groupSet>\
<tagSet><item><key>Name</key><value>node-{n}</value></item><item><key>role</key><value>{role}</value></item>\
<item><key>berth:cluster</key><value>big</value></item></tagSet></item></instancesSet></item>",
            dash = ip.replace('.', "-"),
        ));
    }
    x.push_str("</reservationSet>");
    if let Some(t) = next {
        x.push_str(&format!("<nextToken>{t}</nextToken>"));
    }
    x.push_str("</DescribeInstancesResponse>");
    x
}

fn pages(n: usize) -> Vec<String> {
    let mut v = Vec::new();
    let mut first = 0;
    while first < n {
        let count = (n - first).min(1000);
        let next = (first + count < n).then_some("more");
        v.push(page(first, count, next));
        first += count;
    }
    v
}

fn bench(c: &mut Criterion) {
    let profile = Profile::builtin().unwrap();
    let config = Config {
        role: Some(Role::Master),
        cluster: Some("big".into()),
        ..Config::default()
    };
    let identity = Identity {
        instance_id: format!("i-{:017x}", 0),
        region: "us-east-1".into(),
        availability_zone: "us-east-1a".into(),
        private_ipv4: "10.0.0.0".into(),
        private_dns_name: "ip-10-0-0-0.ec2.internal".into(),
        mac: "0e:00:00:00:00:01".into(),
        vpc_id: "vpc-1".into(),
        subnet_id: "subnet-1".into(),
        security_group_ids: vec!["sg-1".into()],
    };
    let tags: BTreeMap<String, String> = [
        ("Name".to_string(), "node-0".to_string()),
        ("role".to_string(), "master".to_string()),
    ]
    .into();
    let current = HostFiles::new();
    let pending = BTreeSet::new();
    let mut group = c.benchmark_group("discovery+plan");
    for n in [10usize, 100, 1000, 5000] {
        let xml = pages(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &xml, |b, xml| {
            b.iter(|| {
                let mut instances = Vec::with_capacity(n);
                for p in xml {
                    instances.extend(
                        berth_ec2::xml::parse_describe_instances(p)
                            .unwrap()
                            .instances,
                    );
                }
                let me = Me {
                    identity: &identity,
                    role: Role::Master,
                    tags: &tags,
                };
                let membership = discovery::membership(&me, &config, &instances);
                assert_eq!(membership.nodes.len(), n);
                let node = membership.node(&identity.instance_id).unwrap().clone();
                let inputs = Inputs {
                    node: &node,
                    config: &config,
                    membership: &membership,
                    profile: &profile,
                    pending_restarts: &pending,
                    aliases: &[],
                };
                plan::plan(&inputs, &current).unwrap()
            })
        });
    }
    group.finish();

    // The parts, for when the whole misses its target.
    let xml = pages(5000);
    c.bench_function("parts/xml-5000", |b| {
        b.iter(|| {
            xml.iter()
                .map(|p| {
                    berth_ec2::xml::parse_describe_instances(p)
                        .unwrap()
                        .instances
                        .len()
                })
                .sum::<usize>()
        })
    });
    c.bench_function("parts/xml-dom-5000", |b| {
        b.iter(|| {
            xml.iter()
                .map(|p| berth_ec2::xml::parse_document(p).unwrap().children.len())
                .sum::<usize>()
        })
    });
    let instances: Vec<_> = xml
        .iter()
        .flat_map(|p| {
            berth_ec2::xml::parse_describe_instances(p)
                .unwrap()
                .instances
        })
        .collect();
    let me = Me {
        identity: &identity,
        role: Role::Master,
        tags: &tags,
    };
    c.bench_function("parts/membership-5000", |b| {
        b.iter(|| discovery::membership(&me, &config, &instances).nodes.len())
    });
    let membership = discovery::membership(&me, &config, &instances);
    let node = membership.node(&identity.instance_id).unwrap().clone();
    c.bench_function("parts/plan-5000", |b| {
        b.iter(|| {
            let inputs = Inputs {
                node: &node,
                config: &config,
                membership: &membership,
                profile: &profile,
                pending_restarts: &pending,
                aliases: &[],
            };
            plan::plan(&inputs, &current).unwrap().files.len()
        })
    });
}

/// `n` running instances of one cluster, all tagged `Name=node`; the first is the master.
fn one_name(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            let ip = format!("10.{}.{}.{}", k / 65536 + 1, (k / 256) % 256, k % 256);
            Instance {
                instance_id: format!("i-{k:017x}"),
                state: "running".into(),
                private_dns_name: Some(format!("ip-{}.ec2.internal", ip.replace('.', "-"))),
                private_ip_address: Some(ip),
                vpc_id: Some("vpc-1".into()),
                subnet_id: Some("subnet-1".into()),
                security_group_ids: vec!["sg-1".into()],
                tags: [
                    ("Name".to_string(), "node".to_string()),
                    (
                        "role".to_string(),
                        if k == 0 { "master" } else { "minion" }.to_string(),
                    ),
                    ("berth:cluster".to_string(), "big".to_string()),
                ]
                .into(),
            }
        })
        .collect()
}

fn shared_name(c: &mut Criterion) {
    let config = Config {
        role: Some(Role::Master),
        cluster: Some("big".into()),
        ..Config::default()
    };
    let mut group = c.benchmark_group("shared-name");
    group.sample_size(10);
    for n in [5000usize, 50_000] {
        let instances = one_name(n);
        let identity = Identity {
            instance_id: instances[0].instance_id.clone(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            private_ipv4: "10.1.0.0".into(),
            private_dns_name: "ip-10-1-0-0.ec2.internal".into(),
            mac: "0e:00:00:00:00:01".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            security_group_ids: vec!["sg-1".into()],
        };
        let tags = instances[0].tags.clone();
        group.bench_with_input(BenchmarkId::from_parameter(n), &instances, |b, all| {
            b.iter(|| {
                let me = Me {
                    identity: &identity,
                    role: Role::Master,
                    tags: &tags,
                };
                let m = discovery::membership(&me, &config, all);
                assert_eq!(m.nodes.len(), n);
                assert_eq!(m.notes.len(), 1);
                m
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, shared_name);
criterion_main!(benches);
