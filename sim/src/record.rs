//! The request log tests read: one record per request any listener of the region read,
//! never carrying a secret, a token or a signature value.

use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

/// Which listener read a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    Ec2,
    /// An instance's IMDS, by instance id.
    Imds(String),
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Ec2 => write!(f, "ec2"),
            Listener::Imds(id) => write!(f, "imds[{id}]"),
        }
    }
}

/// One request as the region saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub time: SystemTime,
    pub listener: Listener,
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The EC2 `Action`; `None` for IMDS and for EC2 requests without one.
    pub action: Option<String>,
    /// The HTTP status sent; 0 when the connection was reset instead.
    pub status: u16,
    /// IMDS: an `X-aws-ec2-metadata-token` header was present. EC2: an
    /// `X-Amz-Security-Token` (session token) was present.
    pub token_present: bool,
    /// EC2: an `Authorization` header with a SigV4 signature was present.
    pub signed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    records: Mutex<Vec<RequestRecord>>,
}

impl RequestLog {
    pub(crate) fn push(&self, record: RequestRecord) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }

    pub(crate) fn snapshot(&self) -> Vec<RequestRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
