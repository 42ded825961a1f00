//! berth-image: bakes berth into OS images.
//!
//! For: layering berth-agent, its systemd units, its profiles and its default
//! config onto a base OSTree commit (`commit`), and showing what was layered
//! (`inspect`). The result is an ordinary OSTree commit that a host can
//! `rpm-ostree rebase` to. `ami` uploads a raw disk as an EBS snapshot and
//! registers it as an AMI.
//!
//! Not for: building the base OS (that is the distribution's compose), running
//! anything on a host, or per-instance state: nothing under `/var/lib/berth`
//! is ever baked, so every instance runs its own first boot.

pub mod agent;
pub mod ami;
pub mod aws_creds;
pub mod commit;
pub mod disk;
pub mod ebs;
pub mod images;
pub mod inputs;
pub mod inspect;
pub mod kind;
pub mod overlay;
pub mod tree;
pub mod units;
pub mod vagrant;
