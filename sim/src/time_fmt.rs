//! Time formats of the AWS wire: RFC 3339 in IMDS and EC2 XML, the compact SigV4 `X-Amz-Date`.

use std::time::SystemTime;

use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// `2024-05-01T12:00:00Z`, seconds precision, as IMDS writes `Expiration`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_default()
}

/// `2024-05-01T12:00:00.000Z`, as EC2 writes `launchTime`.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_default()
}

/// Parse a SigV4 `X-Amz-Date` such as `20240501T120000Z`.
pub(crate) fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let t = PrimitiveDateTime::parse(
        s,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .ok()?;
    Some(t.assume_utc().into())
}
