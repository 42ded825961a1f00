//! What berth-agent and berth-image share for talking to EC2: an IMDSv2 client, a SigV4-signed
//! client for the EC2 Query API, the XML shapes of its responses, and the retry policy every
//! remote call follows.
//!
//! Not for: deciding anything about the cluster (that is the agent's pure core), or serving EC2
//! (that is `berth-sim`).

pub mod model;

pub use model::{Credentials, Filter, Identity, Instance};
