//! berth-agent: the on-host first-boot agent and reconcile daemon.
//!
//! sources (IMDS, user-data, tags) → config → discovery (EC2, peers by security group) → plan
//! (pure) → apply (files, units) → state (per instance). See DESIGN.md.

pub mod host;
