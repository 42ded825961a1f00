//! The end-to-end harness: the real binaries against berth-sim, moto, systemd in a container,
//! and libostree, each started and stopped (by PID) by the test that needs it.

pub mod agent;
pub mod agent_host;
pub mod dbus;
pub mod moto;
pub mod nspawn;
pub mod qemu;
pub mod rpmostree_double;
