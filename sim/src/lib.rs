//! berth-sim: an emulated EC2 region on one machine, for the demo and the fast tests. Every
//! instance gets its own IMDSv2 endpoint; the region gets one EC2 Query API endpoint
//! (DescribeInstances, DescribeTags) with filters, paging and SigV4 verification, which also
//! serves Parameter Store (GetParameter, PutParameter, DeleteParameter) with per-role access
//! rules. Faults
//! (failures, throttling, resets, latency, expired tokens) are injected per listener at run
//! time, and every request is logged for tests to assert on.
//!
//! It is an independent implementation of the wire protocol: it shares no code with berth-ec2,
//! so a bug in the client is not mirrored in the server.
//!
//! Not for: production, any network but loopback, or the EC2 APIs berth does not call.
//!
//! ```no_run
//! use berth_sim::{ClusterSpec, Sim, Target};
//! # async fn demo() -> std::io::Result<()> {
//! let spec = ClusterSpec::seed();
//! let sim = Sim::start(spec.clone()).await?;
//! let imds = sim.imds_url("fed-master").unwrap(); // http://127.0.0.1:PORT/
//! let ec2 = sim.ec2_url();
//! sim.faults(Target::Ec2).throttle_next(2); // the next two EC2 calls get RequestLimitExceeded
//! let id = sim.launch(spec.not_launched("fed-minion-2").unwrap()).await?;
//! sim.set_state("fed-minion", "stopped");
//! assert!(sim.requests().iter().all(|r| r.status != 500));
//! sim.shutdown().await;
//! # let _ = (imds, ec2, id);
//! # Ok(())
//! # }
//! ```

pub mod cluster;
pub mod demo;
mod ebs;
mod ec2;
pub mod faults;
mod filter;
mod http;
pub mod images;
mod imds;
pub mod record;
mod region;
mod sigv4;
mod ssm;
mod time_fmt;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

pub use cluster::{
    ClusterSpec, CredentialsSpec, InstanceSpec, ParameterRule, SecurityGroupSpec, SpecError,
};
pub use faults::{Faults, Target};
pub use images::{BlockDeviceRecord, ImageRecord, SnapshotRecord};
pub use record::{Listener, RequestRecord};

use faults::FaultState;
use http::Server;
use record::RequestLog;
use region::Region;

/// Where listeners bind when the spec names no address: loopback, any free port.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

struct ImdsListener {
    server: Server,
    faults: Arc<FaultState>,
}

/// A running region: the EC2 endpoint and one IMDS per instance.
pub struct Sim {
    region: Arc<Region>,
    log: Arc<RequestLog>,
    ec2: Server,
    ec2_faults: Arc<FaultState>,
    images: Arc<images::Store>,
    /// By instance id.
    imds: Mutex<BTreeMap<String, ImdsListener>>,
    /// Parameter Store's parameters, served on the EC2 listener.
    parameters: Arc<ssm::ParameterStore>,
}

fn spec_err(e: SpecError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

impl Sim {
    /// Start the region described by `spec`: the EC2 listener and one IMDS listener per
    /// instance, on the spec's addresses or on free loopback ports.
    pub async fn start(spec: ClusterSpec) -> io::Result<Sim> {
        Sim::start_with_images(spec, Arc::default()).await
    }

    /// Start another region of the same account as `peer`: the two share their snapshots and
    /// images (each in its own region), so CopyImage in one reads the source from the other.
    pub async fn start_peer(spec: ClusterSpec, peer: &Sim) -> io::Result<Sim> {
        Sim::start_with_images(spec, peer.images.clone()).await
    }

    async fn start_with_images(spec: ClusterSpec, images: Arc<images::Store>) -> io::Result<Sim> {
        let region = Arc::new(Region::new(&spec).map_err(spec_err)?);
        let log = Arc::new(RequestLog::default());
        let ec2_faults = Arc::new(FaultState::default());
        let parameters = Arc::new(ssm::ParameterStore::default());
        let ssm = Arc::new(ssm::Ssm::new(
            region.clone(),
            parameters.clone(),
            spec.parameter_access.clone(),
            ec2_faults.clone(),
        ));
        let ec2 = Server::bind(
            spec.ec2_listen.unwrap_or(DEFAULT_LISTEN),
            Listener::Ec2,
            Arc::new(ec2::Ec2::new(
                region.clone(),
                images.clone(),
                ec2_faults.clone(),
                ssm,
            )),
            ec2_faults.clone(),
            log.clone(),
        )
        .await?;
        let sim = Sim {
            region,
            log,
            ec2,
            ec2_faults,
            images,
            imds: Mutex::new(BTreeMap::new()),
            parameters,
        };
        let ids: Vec<(String, Option<SocketAddr>)> = sim
            .region
            .world()
            .instances
            .iter()
            .map(|i| (i.id.clone(), i.imds_listen))
            .collect();
        for (id, listen) in ids {
            if let Err(e) = sim.start_imds(&id, listen).await {
                sim.stop_all();
                return Err(e);
            }
        }
        Ok(sim)
    }

    async fn start_imds(&self, id: &str, listen: Option<SocketAddr>) -> io::Result<()> {
        let faults = Arc::new(FaultState::default());
        let server = Server::bind(
            listen.unwrap_or(DEFAULT_LISTEN),
            Listener::Imds(id.to_string()),
            Arc::new(imds::Imds::new(
                self.region.clone(),
                id.to_string(),
                faults.clone(),
            )),
            faults.clone(),
            self.log.clone(),
        )
        .await?;
        log::info!("{id}: IMDS on http://{}/", server.addr);
        self.imds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), ImdsListener { server, faults });
        Ok(())
    }

    /// The EC2 endpoint, e.g. `http://127.0.0.1:41234/`.
    pub fn ec2_url(&self) -> String {
        format!("http://{}/", self.ec2.addr)
    }

    /// The EC2 listener's address.
    pub fn ec2_addr(&self) -> SocketAddr {
        self.ec2.addr
    }

    /// The IMDS endpoint of an instance (by id or `Name`), e.g. `http://127.0.0.1:41235/`.
    pub fn imds_url(&self, id_or_name: &str) -> Option<String> {
        self.imds_addr(id_or_name).map(|a| format!("http://{a}/"))
    }

    /// The IMDS listener address of an instance (by id or `Name`).
    pub fn imds_addr(&self, id_or_name: &str) -> Option<SocketAddr> {
        let id = self.region.resolve(id_or_name)?;
        let imds = self.imds.lock().unwrap_or_else(|p| p.into_inner());
        imds.get(&id).map(|l| l.server.addr)
    }

    /// The instance id of the instance with this `Name` (or this id).
    pub fn instance_id(&self, name: &str) -> Option<String> {
        self.region.resolve(name)
    }

    /// The region's name, e.g. `us-east-1`.
    pub fn region(&self) -> &str {
        &self.region.region
    }

    /// Every instance as `(name, instance id, state)`, in launch order.
    pub fn instances(&self) -> Vec<(String, String, String)> {
        self.region
            .world()
            .instances
            .iter()
            .map(|i| (i.name.clone(), i.id.clone(), i.state().to_string()))
            .collect()
    }

    /// The private IPv4 address of an instance (by id or `Name`).
    pub fn private_ip(&self, id_or_name: &str) -> Option<Ipv4Addr> {
        let id = self.region.resolve(id_or_name)?;
        let w = self.region.world();
        w.instances
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.private_ip)
    }

    /// Launch a new instance: `pending` for the cluster's `launch_pending_ms`, then `running`
    /// (unless the spec names a state). Its IMDS starts at once. Returns its instance id.
    pub async fn launch(&self, spec: InstanceSpec) -> io::Result<String> {
        let id = self.region.add_instance(&spec, true).map_err(spec_err)?;
        self.start_imds(&id, spec.imds_listen).await?;
        log::info!("launched {} as {id}", spec.name);
        Ok(id)
    }

    /// Set an instance's state (`pending`, `running`, `stopping`, `stopped`, `shutting-down`,
    /// `terminated`). Panics on an unknown instance or state: that is a bug in the test.
    pub fn set_state(&self, id_or_name: &str, state: &str) {
        let id = self
            .region
            .resolve(id_or_name)
            .unwrap_or_else(|| panic!("berth-sim: no instance `{id_or_name}`"));
        assert!(
            self.region.set_state(&id, state),
            "berth-sim: `{state}` is not an EC2 instance state"
        );
    }

    /// Set (`Some`) or delete (`None`) a tag of an instance. Panics on an unknown instance.
    pub fn set_tag(&self, id_or_name: &str, key: &str, value: Option<&str>) {
        let id = self
            .region
            .resolve(id_or_name)
            .unwrap_or_else(|| panic!("berth-sim: no instance `{id_or_name}`"));
        self.region.set_tag(&id, key, value);
    }

    /// The fault controls of one listener. Panics on an unknown instance.
    pub fn faults(&self, target: Target) -> Faults {
        let state = match target {
            Target::Ec2 => self.ec2_faults.clone(),
            Target::Imds(id_or_name) => {
                let id = self
                    .region
                    .resolve(&id_or_name)
                    .unwrap_or_else(|| panic!("berth-sim: no instance `{id_or_name}`"));
                let imds = self.imds.lock().unwrap_or_else(|p| p.into_inner());
                imds.get(&id)
                    .unwrap_or_else(|| panic!("berth-sim: instance `{id}` has no IMDS"))
                    .faults
                    .clone()
            }
        };
        Faults { state }
    }

    /// Every image of the account (all regions sharing it), as registered or copied.
    pub fn images(&self) -> Vec<ImageRecord> {
        self.images.images()
    }

    /// Every snapshot of the account (all regions sharing it), blocks included.
    pub fn snapshots(&self) -> Vec<SnapshotRecord> {
        self.images.snapshots()
    }

    /// The blocks written to a snapshot, by block index: `None` when there is no such snapshot.
    pub fn snapshot_blocks(&self, id: &str) -> Option<BTreeMap<u64, Vec<u8>>> {
        self.images.snapshot(id).map(|s| {
            s.blocks
                .into_iter()
                .map(|(i, b)| (i, b.data.as_ref().clone()))
                .collect()
        })
    }

    /// Fail the next `n` calls of an EC2 action (`RegisterImage`) or EBS direct API
    /// (`PutSnapshotBlock`) with `status` and the AWS error `code`, after their signature was
    /// checked. `n = 0` cancels.
    pub fn fail_action(&self, action: &str, n: u32, status: u16, code: &str) {
        self.images.fail_action(action, n, status, code);
    }

    /// The Parameter Store parameter `name` as `(value, version)`: the stored value, decrypted
    /// for a `SecureString`. `None` when there is none.
    pub fn parameter(&self, name: &str) -> Option<(String, i64)> {
        self.parameters.get(name).map(|p| (p.value, p.version))
    }

    /// Whether the parameter `name` is a `SecureString`; `None` when there is none.
    pub fn parameter_is_secure(&self, name: &str) -> Option<bool> {
        self.parameters.get(name).map(|p| p.secure)
    }

    /// Creates or overwrites the parameter `name` (a `SecureString` when `secure`), as a
    /// `PutParameter` with `Overwrite` would: a new name starts at version 1, each write adds
    /// one. Not checked against the name rules, so a test can plant what SSM would refuse.
    pub fn put_parameter(&self, name: &str, value: &str, secure: bool) {
        self.parameters.put(name, value, secure);
    }

    /// Deletes the parameter `name`; false when there was none.
    pub fn delete_parameter(&self, name: &str) -> bool {
        self.parameters.delete(name)
    }

    /// Every request read so far, in order (the latest 100 000).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log.snapshot()
    }

    fn stop_all(&self) {
        self.ec2.stop();
        for l in self.imds.lock().unwrap_or_else(|p| p.into_inner()).values() {
            l.server.stop();
        }
    }

    /// Stop every listener and close every connection.
    pub async fn shutdown(self) {
        self.stop_all();
        // Let the aborted tasks run their drops (closing sockets) before returning.
        tokio::task::yield_now().await;
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop_all();
    }
}
