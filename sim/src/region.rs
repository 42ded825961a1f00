//! The state of the emulated region: its instances and the access keys it knows. Both the EC2
//! endpoint and every IMDS read it, under one lock, so that what IMDS says about an instance and
//! what DescribeInstances says always agree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::cluster::{
    imds_tag_key_ok, parse_rfc3339, ClusterSpec, CredentialsSpec, InstanceSpec, SecurityGroupSpec,
    SpecError, STATES,
};

/// AWS makes new role credentials available "at least five minutes before the expiration of the
/// old credentials"; with a short test lifetime, rotate at half of it instead.
const ROTATE_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Addresses handed to instances launched without one: the seed's VPC is 172.30.0.0/16 and
/// its nodes sit in 172.30.0.0/24.
const AUTO_IP_BASE: [u8; 3] = [172, 30, 0];

pub(crate) struct Region {
    pub region: String,
    pub account_id: String,
    pub availability_zone: String,
    pub page_size: usize,
    pub verify_sigv4: bool,
    pub credential_lifetime: Duration,
    pub launch_pending: Duration,
    pub groups: Vec<SecurityGroupSpec>,
    default_vpc: String,
    default_subnet: String,
    world: Mutex<World>,
}

#[derive(Default)]
pub(crate) struct World {
    /// In launch order.
    pub instances: Vec<Instance>,
    keys: HashMap<String, Key>,
}

pub(crate) struct Instance {
    pub id: String,
    pub name: String,
    pub reservation_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub private_ip: Ipv4Addr,
    pub private_dns_name: String,
    pub mac: String,
    pub eni_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub groups: Vec<SecurityGroupSpec>,
    /// Every tag, `Name` included.
    pub tags: BTreeMap<String, String>,
    state: String,
    /// While `pending` after a launch: when it becomes `running`.
    running_at: Option<Instant>,
    pub launch_time: SystemTime,
    /// What IMDS serves at `user-data`, raw (`InstanceSpec::user_data_bytes`).
    pub user_data: Option<Vec<u8>>,
    pub imds_tags: bool,
    pub iam_role: Option<String>,
    explicit_credentials: Option<CredentialsSpec>,
    /// The access key id of the role credentials currently served.
    current_key: Option<String>,
    pub imds_listen: Option<std::net::SocketAddr>,
    /// IMDS `local-hostname` when it differs from the private DNS name.
    pub local_hostname: Option<String>,
    pub ipv6_only: bool,
}

impl Instance {
    /// Position within its reservation (`amiLaunchIndex`).
    pub fn launch_index(&self, all: &[Instance]) -> usize {
        all.iter()
            .filter(|i| i.reservation_id == self.reservation_id)
            .position(|i| i.id == self.id)
            .unwrap_or(0)
    }

    pub fn state(&self) -> &str {
        &self.state
    }

    pub fn state_code(&self) -> u16 {
        STATES
            .iter()
            .find(|(s, _)| *s == self.state)
            .map(|(_, c)| *c)
            .unwrap_or(0)
    }

    /// A terminated instance has let go of its network interface: EC2 shows no address, subnet
    /// or VPC for it any more.
    pub fn has_network(&self) -> bool {
        self.state != "terminated"
    }

    /// Tags that IMDS serves (keys EC2 allows there).
    pub fn imds_tag_keys(&self) -> Vec<&str> {
        self.tags
            .keys()
            .filter(|k| imds_tag_key_ok(k))
            .map(String::as_str)
            .collect()
    }
}

/// An access key the EC2 endpoint accepts.
#[derive(Clone)]
pub(crate) struct Key {
    pub secret: String,
    pub session_token: Option<String>,
    pub expiration: Option<SystemTime>,
    /// The instance profile these credentials were issued for: `(role, instance id)`; `None`
    /// for the cluster's own access keys.
    pub role_session: Option<(String, String)>,
}

/// Role credentials as IMDS serves them.
pub(crate) struct RoleCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    pub expiration: SystemTime,
    pub last_updated: SystemTime,
}

/// `prefix` followed by 17 hex digits derived from `seed`, like EC2's long ids (`i-0…`).
pub(crate) fn derived_id(prefix: &str, seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    format!("{prefix}-0{}", hex::encode(&digest[..8]))
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    (0..len)
        .map(|_| alphabet[fastrand::usize(..alphabet.len())] as char)
        .collect()
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE64ISH: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Region {
    pub fn new(spec: &ClusterSpec) -> Result<Region, SpecError> {
        spec.validate()?;
        let mut world = World::default();
        for c in &spec.credentials {
            world.keys.insert(c.access_key_id.clone(), key_of(c));
        }
        let region = Region {
            region: spec.region.clone(),
            account_id: spec.account_id.clone(),
            availability_zone: spec.availability_zone(),
            page_size: spec.page_size,
            verify_sigv4: spec.verify_sigv4,
            credential_lifetime: Duration::from_secs(spec.credential_lifetime_secs),
            launch_pending: Duration::from_millis(spec.launch_pending_ms),
            groups: spec.security_groups.clone(),
            default_vpc: spec.vpc_id.clone(),
            default_subnet: spec.subnet_id.clone(),
            world: Mutex::new(world),
        };
        for inst in &spec.instances {
            region.add_instance(inst, false)?;
        }
        Ok(region)
    }

    /// The world, with pending instances whose time has come moved to `running`.
    pub fn world(&self) -> MutexGuard<'_, World> {
        let mut w = self.world.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for inst in &mut w.instances {
            if inst.running_at.is_some_and(|t| now >= t) {
                inst.running_at = None;
                if inst.state == "pending" {
                    inst.state = "running".into();
                }
            }
        }
        w
    }

    /// Add an instance; `launching` starts it `pending` (unless its spec names a state).
    /// Returns its id.
    pub fn add_instance(&self, spec: &InstanceSpec, launching: bool) -> Result<String, SpecError> {
        let group_ids: BTreeSet<&str> = self.groups.iter().map(|g| g.id.as_str()).collect();
        spec.validate(&format!("instance `{}`", spec.name), &group_ids)?;
        let mut w = self.world();
        let at = |field: &str, message: String| SpecError::Invalid {
            field: format!("instance `{}`.{field}", spec.name),
            message,
        };
        if w.instances.iter().any(|i| i.name == spec.name) {
            return Err(at("name", "another instance has this name".into()));
        }
        let id = spec
            .instance_id
            .clone()
            .unwrap_or_else(|| derived_id("i", &format!("{}/{}", self.region, spec.name)));
        if w.instances.iter().any(|i| i.id == id) {
            return Err(at("instance_id", format!("`{id}` is taken")));
        }
        let private_ip = match spec.private_ip {
            Some(ip) => {
                if w.instances
                    .iter()
                    .any(|i| i.private_ip == ip && i.has_network())
                {
                    return Err(at("private_ip", format!("{ip} is taken")));
                }
                ip
            }
            None => (10..=254)
                .map(|n| Ipv4Addr::new(AUTO_IP_BASE[0], AUTO_IP_BASE[1], AUTO_IP_BASE[2], n))
                .find(|ip| !w.instances.iter().any(|i| i.private_ip == *ip))
                .ok_or_else(|| at("private_ip", "no free address left in 172.30.0.0/24".into()))?,
        };
        let private_dns_name = spec.private_dns_name.clone().unwrap_or_else(|| {
            let host = format!("ip-{}", private_ip.to_string().replace('.', "-"));
            if self.region == "us-east-1" {
                format!("{host}.ec2.internal")
            } else {
                format!("{host}.{}.compute.internal", self.region)
            }
        });
        let groups = match &spec.security_groups {
            Some(ids) => ids
                .iter()
                .filter_map(|id| self.groups.iter().find(|g| &g.id == id).cloned())
                .collect(),
            None => self.groups.clone(),
        };
        let mut tags = spec.tags.clone();
        tags.insert("Name".into(), spec.name.clone());
        let mac_digest = Sha256::digest(format!("mac/{id}").as_bytes());
        let mac = format!(
            "0e:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            mac_digest[0], mac_digest[1], mac_digest[2], mac_digest[3], mac_digest[4]
        );
        let state = spec
            .state
            .clone()
            .unwrap_or_else(|| if launching { "pending" } else { "running" }.into());
        let running_at =
            (launching && state == "pending").then(|| Instant::now() + self.launch_pending);
        if let Some(c) = &spec.credentials {
            let mut key = key_of(c);
            key.role_session = spec.iam_role.clone().map(|role| (role, id.clone()));
            w.keys.insert(c.access_key_id.clone(), key);
        }
        w.instances.push(Instance {
            reservation_id: match &spec.reservation {
                Some(label) => derived_id("r", &format!("{}/reservation/{label}", self.region)),
                None => derived_id("r", &format!("reservation/{id}")),
            },
            eni_id: derived_id("eni", &format!("eni/{id}")),
            image_id: spec
                .image_id
                .clone()
                .unwrap_or_else(|| derived_id("ami", &format!("{}/berth", self.region))),
            instance_type: spec
                .instance_type
                .clone()
                .unwrap_or_else(|| "t3.medium".into()),
            name: spec.name.clone(),
            private_ip,
            private_dns_name,
            mac,
            vpc_id: spec
                .vpc_id
                .clone()
                .unwrap_or_else(|| self.default_vpc.clone()),
            subnet_id: spec
                .subnet_id
                .clone()
                .unwrap_or_else(|| self.default_subnet.clone()),
            groups,
            tags,
            state,
            running_at,
            launch_time: SystemTime::now(),
            user_data: spec.user_data_bytes(),
            imds_tags: spec.imds_tags,
            iam_role: spec.iam_role.clone(),
            explicit_credentials: spec.credentials.clone(),
            current_key: None,
            imds_listen: spec.imds_listen,
            local_hostname: spec.local_hostname.clone(),
            ipv6_only: spec.ipv6_only,
            id: id.clone(),
        });
        Ok(id)
    }

    /// The id of the instance with this id or `Name`.
    pub fn resolve(&self, id_or_name: &str) -> Option<String> {
        let w = self.world();
        w.instances
            .iter()
            .find(|i| i.id == id_or_name)
            .or_else(|| w.instances.iter().find(|i| i.name == id_or_name))
            .map(|i| i.id.clone())
    }

    pub fn set_state(&self, id: &str, state: &str) -> bool {
        if !STATES.iter().any(|(s, _)| *s == state) {
            return false;
        }
        let mut w = self.world();
        match w.instances.iter_mut().find(|i| i.id == id) {
            Some(inst) => {
                inst.state = state.into();
                inst.running_at = None;
                true
            }
            None => false,
        }
    }

    pub fn set_tag(&self, id: &str, key: &str, value: Option<&str>) -> bool {
        let mut w = self.world();
        match w.instances.iter_mut().find(|i| i.id == id) {
            Some(inst) => {
                match value {
                    Some(v) => inst.tags.insert(key.into(), v.into()),
                    None => inst.tags.remove(key),
                };
                if key == "Name" {
                    if let Some(v) = value {
                        inst.name = v.into();
                    }
                }
                true
            }
            None => false,
        }
    }

    /// The role credentials IMDS serves to `id` now, issuing fresh ones when none exist or the
    /// current ones are close to their expiration. Older keys stay valid until they expire,
    /// as on AWS.
    pub fn role_credentials(&self, id: &str) -> Option<RoleCredentials> {
        let lifetime = self.credential_lifetime;
        let rotate_before = ROTATE_BEFORE.min(lifetime / 2);
        let now = SystemTime::now();
        let mut w = self.world();
        let World { instances, keys } = &mut *w;
        let inst = instances.iter_mut().find(|i| i.id == id)?;
        inst.iam_role.as_ref()?;
        if let Some(c) = &inst.explicit_credentials {
            return Some(RoleCredentials {
                access_key_id: c.access_key_id.clone(),
                secret_access_key: c.secret_access_key.clone(),
                token: c.session_token.clone().unwrap_or_default(),
                expiration: c
                    .expiration
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .unwrap_or(now + lifetime),
                last_updated: inst.launch_time,
            });
        }
        let fresh = inst.current_key.as_ref().and_then(|akid| {
            let key = keys.get(akid)?;
            let exp = key.expiration?;
            (exp.duration_since(now).unwrap_or_default() > rotate_before).then_some(akid.clone())
        });
        let akid = match fresh {
            Some(akid) => akid,
            None => {
                let akid = format!("ASIA{}", random_string(16, UPPER_DIGITS));
                keys.insert(
                    akid.clone(),
                    Key {
                        secret: random_string(40, BASE64ISH),
                        session_token: Some(random_string(356, BASE64ISH)),
                        expiration: Some(now + lifetime),
                        role_session: inst.iam_role.clone().map(|r| (r, inst.id.clone())),
                    },
                );
                inst.current_key = Some(akid.clone());
                akid
            }
        };
        let key = keys.get(&akid)?;
        let expiration = key.expiration.unwrap_or(now + lifetime);
        Some(RoleCredentials {
            access_key_id: akid,
            secret_access_key: key.secret.clone(),
            token: key.session_token.clone().unwrap_or_default(),
            expiration,
            last_updated: expiration - lifetime,
        })
    }

    pub fn key(&self, access_key_id: &str) -> Option<Key> {
        self.world().keys.get(access_key_id).cloned()
    }
}

fn key_of(c: &CredentialsSpec) -> Key {
    Key {
        secret: c.secret_access_key.clone(),
        session_token: c.session_token.clone(),
        expiration: c.expiration.as_deref().and_then(parse_rfc3339),
        role_session: None,
    }
}
