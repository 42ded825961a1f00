//! What berth-agent and berth-image share for talking to EC2: an IMDSv2 client, a SigV4-signed
//! client for the EC2 Query API and the XML shapes of its responses, a Parameter Store (SSM)
//! client for the cluster's secrets, and the retry policy every remote call follows.
//!
//! Not for: deciding anything about the cluster (that is the agent's pure core), or serving EC2
//! (that is `berth-sim`). Nothing here logs or displays a secret key or a token.

pub mod api;
pub mod imds;
pub mod model;
pub mod redact;
pub mod retry;
pub mod sign;
pub mod skew;
pub mod ssm;
pub mod transport;
pub mod xml;

pub use api::{Ec2Client, Ec2Error, Paged};
pub use imds::{ImdsClient, ImdsError};
pub use model::{Credentials, Filter, Identity, Instance, TagDescription};
pub use redact::RemoteText;
pub use retry::{Operation, RetryPolicy};
pub use ssm::{Parameter, ParameterType, PutOutcome, SsmClient, SsmError};
pub use transport::{Transport, TransportConfig};
