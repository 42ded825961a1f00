//! The shapes berth reads from IMDS and the EC2 API. Every field here came from outside the
//! host and is untrusted: consumers validate before any value reaches a file.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

/// This instance, as IMDS describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub private_ipv4: String,
    pub private_dns_name: String,
    pub mac: String,
    pub vpc_id: String,
    pub subnet_id: String,
    /// From `network/interfaces/macs/<mac>/security-group-ids`, in the order IMDS lists them.
    pub security_group_ids: Vec<String>,
}

/// One instance from DescribeInstances.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    pub instance_id: String,
    /// `instanceState/name`: pending, running, shutting-down, terminated, stopping, stopped.
    pub state: String,
    pub private_ip_address: Option<String>,
    pub private_dns_name: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    /// Group IDs from `groupSet`.
    pub security_group_ids: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// A DescribeInstances / DescribeTags filter (`Filter.N.Name`, `Filter.N.Value.M`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    pub fn new<I, S>(name: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Filter {
            name: name.to_string(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }
}

/// Temporary role credentials. `Debug` never shows the secret or the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub expiration: Option<SystemTime>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// One tag from DescribeTags.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagDescription {
    pub resource_id: String,
    /// `instance`, `image`, `volume`, ...
    pub resource_type: String,
    pub key: String,
    pub value: String,
}
