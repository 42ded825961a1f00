//! berth-agent: the on-host first-boot agent and reconcile daemon.
//!
//! sources (IMDS, user-data, tags) → config → discovery (EC2: peers by security group) → plan
//! (pure) → apply (files, units) → state (per instance). The pure core (`config`, `discovery`,
//! `plan`, `hosts`, `profile`, `poll`) touches neither the network nor the disk; the edges
//! (`sources`, `apply`, `state`, `host`) are thin.
//!
//! Not for: building images (berth-image) or serving EC2 (berth-sim).

pub(crate) mod apply;
pub mod config;
pub mod discovery;
pub mod etcd;
pub mod host;
pub(crate) mod hosts;
pub mod kube;
pub(crate) mod lifecycle;
pub mod lock;
pub mod logging;
pub mod notify;
pub mod plan;
pub mod poll;
pub mod profile;
pub mod run;
pub(crate) mod sources;
pub mod state;
pub mod status;
pub(crate) mod userdata;
