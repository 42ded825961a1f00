//! The request log tests read: one record per request any listener of the region read,
//! never carrying a secret, a token or a signature value.

use std::collections::VecDeque;
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

/// Records kept; older ones are dropped. A test makes at most a few thousand requests, while a
/// demo left running for a day with agents polling would otherwise grow without bound
/// (about 200 bytes a record: this caps the log near 20 MB).
const MAX_RECORDS: usize = 100_000;

#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    records: Mutex<VecDeque<RequestRecord>>,
}

impl RequestLog {
    pub(crate) fn push(&self, record: RequestRecord) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() == MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(record);
    }

    pub(crate) fn snapshot(&self) -> Vec<RequestRecord> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.iter().cloned().collect()
    }
}
