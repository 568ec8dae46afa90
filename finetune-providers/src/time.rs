//! One conversion from the providers' timestamps (Unix seconds on the
//! OpenAI wire, the AWS SDK's `DateTime`) to `DateTime<Utc>`.

use chrono::{DateTime, Utc};

/// Seconds and nanoseconds since the Unix epoch; `None` when out of range.
pub(crate) fn from_unix(secs: i64, nanos: u32) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, nanos)
}

/// Whole seconds since the Unix epoch, as the OpenAI wire sends them.
#[cfg(any(feature = "openai", feature = "azure"))]
pub(crate) fn from_unix_seconds(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| from_unix(s, 0))
}

/// The AWS SDK's timestamps (out of range ones become the epoch).
#[cfg(feature = "bedrock")]
pub(crate) fn from_aws(t: &aws_sdk_bedrock::primitives::DateTime) -> DateTime<Utc> {
    from_unix(t.secs(), t.subsec_nanos()).unwrap_or_default()
}
