//! Validated domain types, converted from wire messages at the one place they are received.
//!
//! Every conversion reports all violations with their field path (see [`crate::error`]) and
//! never echoes a personal value in a description.

use crate::error::Violations;
use crate::pb::{
    AggregateQuery, Channel, Dimension, Direction, InteractionRecord, Metric, Purpose, RecordQuery,
    SubjectRecord,
};

/// Longest tenant id.
pub const MAX_TENANT_LEN: usize = 63;
/// Longest external id, interaction id or idempotency key.
pub const MAX_ID_LEN: usize = 128;
/// Longest free-text comment, in bytes.
pub const MAX_COMMENT_LEN: usize = 4096;
/// Longest profile field (name, e-mail, phone, postal code, language), in bytes.
pub const MAX_PROFILE_FIELD_LEN: usize = 256;
/// Longest outcome or team code, in bytes.
pub const MAX_CODE_LEN: usize = 64;
/// The current year (UTC), by the proleptic Gregorian calendar.
pub fn current_year() -> u32 {
    year_of(unix_now())
}

/// The civil date (year, month, day) of a day number (days since 1970-01-01; proleptic
/// Gregorian, Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; H. Hinnant's algorithm), the
/// inverse of [`civil_from_days`].
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The number of days in month `m` (1 to 12) of year `y` (proleptic Gregorian).
pub fn days_in_month(y: i64, m: i64) -> i64 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)
}

/// The year (UTC) of a Unix time.
pub fn year_of(unix_seconds: i64) -> u32 {
    u32::try_from(civil_from_days(unix_seconds.div_euclid(86_400)).0).unwrap_or(0)
}

/// What a code (`outcome`, `agent_team`, `survey_id`) must be, for error messages.
pub const CODE_RULE: &str = "a code: lower-case letters, digits, '.', '_' or '-', starting with \
     a letter or digit, at most 64 bytes (free text is refused: these fields are stored and \
     released in clear)";

/// Whether `s` is a code: `[a-z0-9][a-z0-9._-]{0,63}`. Codes are stored in clear and released
/// verbatim, so they admit no spaces, capitals or `@`: a name, e-mail or sentence is refused.
pub fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_CODE_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Earliest accepted interaction time: 2000-01-01T00:00:00Z.
pub const MIN_TIMESTAMP: i64 = 946_684_800;
/// Latest accepted interaction time: 2100-01-01T00:00:00Z.
pub const MAX_TIMESTAMP: i64 = 4_102_444_800;
/// Longest handle time: one day.
pub const MAX_HANDLE_TIME_SECONDS: u32 = 86_400;

/// A tenant id: 1 to 63 of `a-z 0-9 - _`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validates `s` as the tenant id at `field`.
    pub fn parse(s: &str, field: &str) -> Result<Self, Violations> {
        let ok = !s.is_empty()
            && s.len() <= MAX_TENANT_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Violations::one(
                field,
                "must be 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
            ))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// True for an ISO 3166-1 alpha-2 shaped code: two upper-case ASCII letters.
pub fn is_country_code(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// True for a region id: 1 to 63 of `a-z 0-9 -`, starting with a letter or digit.
pub fn is_region_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// True for an id (external id, interaction id, idempotency key): 1 to 128 bytes, no control
/// characters.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control)
}

/// A validated aggregate query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateSpec {
    /// Declared purpose.
    pub purpose: Purpose,
    /// Metrics, in request order, without duplicates.
    pub metrics: Vec<Metric>,
    /// Grouping dimensions, in request order, without duplicates.
    pub group_by: Vec<Dimension>,
    /// Inclusive start, Unix seconds.
    pub start: Option<i64>,
    /// Exclusive end, Unix seconds.
    pub end: Option<i64>,
    /// Channels to keep; empty keeps all.
    pub channels: Vec<Channel>,
    /// Requested minimum group size (0: the region's own).
    pub min_group_size: u32,
    /// Requested differential-privacy epsilon; `None` asks for no noise.
    pub epsilon: Option<Epsilon>,
}

/// A differential-privacy epsilon: a positive whole number of thousandths, at most 10.
///
/// Epsilon is kept as an integer so that the noise sampler can use exact rational arithmetic;
/// a requested value is rounded *down* to a thousandth, which only adds noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epsilon(u32);

impl Epsilon {
    /// Thousandths per unit.
    pub const SCALE: u32 = 1_000;
    /// The largest epsilon accepted.
    pub const MAX: Self = Self(10 * Self::SCALE);

    /// Validates `value` (greater than 0 and at most 10, at least 0.001 after rounding down).
    pub fn from_f64(value: f64, path: &str) -> Result<Self, Violations> {
        let milli = (value * f64::from(Self::SCALE)).floor();
        if value.is_finite() && value > 0.0 && milli >= 1.0 && value <= 10.0 {
            Ok(Self(milli as u32))
        } else {
            Err(Violations::one(
                path,
                "must be at least 0.001 and at most 10",
            ))
        }
    }

    /// From thousandths (at least 1).
    pub fn from_milli(milli: u32) -> Self {
        Self(milli.clamp(1, Self::MAX.0))
    }

    /// In thousandths.
    pub fn milli(self) -> u32 {
        self.0
    }

    /// As a float, for reporting.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(Self::SCALE)
    }
}

/// Largest `min_group_size` a request may ask for.
pub const MAX_MIN_GROUP_SIZE: u32 = 1_000_000;

impl AggregateSpec {
    /// Validates `query`, found at `path` in the request (e.g. `"query"`).
    pub fn from_query(query: Option<&AggregateQuery>, path: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let Some(q) = query else {
            return Err(Violations::one(path, "required"));
        };
        let purpose = purpose_of(q.purpose, &format!("{path}.purpose"), &mut v);
        let metrics = enum_list(
            &q.metrics,
            &format!("{path}.metrics"),
            &mut v,
            Metric::Unspecified,
        );
        if q.metrics.is_empty() {
            v.add(format!("{path}.metrics"), "at least one metric is required");
        }
        let group_by = enum_list(
            &q.group_by,
            &format!("{path}.group_by"),
            &mut v,
            Dimension::Unspecified,
        );
        let channels = enum_list(
            &q.channels,
            &format!("{path}.channels"),
            &mut v,
            Channel::Unspecified,
        );
        let (start, end) = time_range(q.time_range.as_ref(), path, &mut v);
        if q.min_group_size > MAX_MIN_GROUP_SIZE {
            v.add(
                format!("{path}.min_group_size"),
                format!("at most {MAX_MIN_GROUP_SIZE}"),
            );
        }
        let epsilon = match q.epsilon {
            None => None,
            Some(e) => match Epsilon::from_f64(e, &format!("{path}.epsilon")) {
                Ok(e) => Some(e),
                Err(e) => {
                    v.0.extend(e.0);
                    None
                }
            },
        };
        v.into_result(Self {
            purpose,
            metrics,
            group_by,
            start,
            end,
            channels,
            min_group_size: q.min_group_size,
            epsilon,
        })
    }

    /// Back to the wire form (for forwarding to regions).
    pub fn to_query(&self) -> AggregateQuery {
        AggregateQuery {
            purpose: self.purpose as i32,
            metrics: self.metrics.iter().map(|m| *m as i32).collect(),
            group_by: self.group_by.iter().map(|d| *d as i32).collect(),
            time_range: wire_range(self.start, self.end),
            channels: self.channels.iter().map(|c| *c as i32).collect(),
            min_group_size: self.min_group_size,
            epsilon: self.epsilon.map(Epsilon::as_f64),
        }
    }
}

/// Largest number of records one `QueryRecords` call returns (and the default).
pub const MAX_RECORDS_PER_QUERY: u32 = 100_000;

/// A validated record query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpec {
    /// Declared purpose; keys the pseudonyms.
    pub purpose: Purpose,
    /// Inclusive start, Unix seconds.
    pub start: Option<i64>,
    /// Exclusive end, Unix seconds.
    pub end: Option<i64>,
    /// Channels to keep; empty keeps all.
    pub channels: Vec<Channel>,
    /// Most records to return, 1 to [`MAX_RECORDS_PER_QUERY`].
    pub limit: u32,
}

impl RecordSpec {
    /// Validates `query`, found at `path` in the request.
    pub fn from_query(query: Option<&RecordQuery>, path: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let Some(q) = query else {
            return Err(Violations::one(path, "required"));
        };
        let purpose = purpose_of(q.purpose, &format!("{path}.purpose"), &mut v);
        let channels = enum_list(
            &q.channels,
            &format!("{path}.channels"),
            &mut v,
            Channel::Unspecified,
        );
        let (start, end) = time_range(q.time_range.as_ref(), path, &mut v);
        if q.limit > MAX_RECORDS_PER_QUERY {
            v.add(
                format!("{path}.limit"),
                format!("at most {MAX_RECORDS_PER_QUERY}"),
            );
        }
        let limit = if q.limit == 0 {
            MAX_RECORDS_PER_QUERY
        } else {
            q.limit
        };
        v.into_result(Self {
            purpose,
            start,
            end,
            channels,
            limit,
        })
    }

    /// Back to the wire form (for forwarding to regions).
    pub fn to_query(&self) -> RecordQuery {
        RecordQuery {
            purpose: self.purpose as i32,
            time_range: wire_range(self.start, self.end),
            channels: self.channels.iter().map(|c| *c as i32).collect(),
            limit: self.limit,
        }
    }
}

/// Decodes a required purpose.
pub(crate) fn purpose_of(raw: i32, path: &str, v: &mut Violations) -> Purpose {
    match Purpose::try_from(raw) {
        Ok(Purpose::Unspecified) | Err(_) => {
            v.add(path, "required: a known Purpose other than UNSPECIFIED");
            Purpose::Unspecified
        }
        Ok(p) => p,
    }
}

/// Decodes an optional time range at `{path}.time_range`.
fn time_range(
    range: Option<&crate::pb::TimeRange>,
    path: &str,
    v: &mut Violations,
) -> (Option<i64>, Option<i64>) {
    let Some(range) = range else {
        return (None, None);
    };
    let start = range
        .start
        .as_ref()
        .map(|t| whole_second(t, format!("{path}.time_range.start"), v));
    let end = range
        .end
        .as_ref()
        .map(|t| whole_second(t, format!("{path}.time_range.end"), v));
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        v.add(format!("{path}.time_range"), "start must be before end");
    }
    (start, end)
}

/// The wire form of an optional time range.
fn wire_range(start: Option<i64>, end: Option<i64>) -> Option<crate::pb::TimeRange> {
    let ts = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
    (start.is_some() || end.is_some()).then(|| crate::pb::TimeRange {
        start: start.map(ts),
        end: end.map(ts),
    })
}

/// Decodes a repeated enum field: every value known, none UNSPECIFIED, no duplicates.
fn enum_list<E>(values: &[i32], path: &str, v: &mut Violations, unspecified: E) -> Vec<E>
where
    E: TryFrom<i32> + PartialEq + Copy,
{
    let mut out: Vec<E> = Vec::with_capacity(values.len());
    for (i, raw) in values.iter().enumerate() {
        match E::try_from(*raw) {
            Ok(e) if e == unspecified => v.add(format!("{path}[{i}]"), "must not be UNSPECIFIED"),
            Ok(e) if out.contains(&e) => v.add(format!("{path}[{i}]"), "duplicate value"),
            Ok(e) => out.push(e),
            Err(_) => v.add(format!("{path}[{i}]"), format!("unknown enum value {raw}")),
        }
    }
    out
}

/// A validated customer profile.
#[derive(Clone, PartialEq, Eq)]
pub struct Subject {
    /// The tenant's key for the customer.
    pub external_id: String,
    /// Full name, possibly empty.
    pub full_name: String,
    /// E-mail, possibly empty.
    pub email: String,
    /// Phone, possibly empty.
    pub phone: String,
    /// Postal code, possibly empty.
    pub postal_code: String,
    /// BCP 47 language tag, possibly empty.
    pub language: String,
    /// Year of birth, when known.
    pub birth_year: Option<u16>,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject").finish_non_exhaustive()
    }
}

impl Subject {
    /// Validates a sealed subject payload; field paths start at `path`.
    pub fn validate(r: SubjectRecord, path: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        if !is_valid_id(&r.external_id) {
            v.add(
                format!("{path}.external_id"),
                "must be 1 to 128 bytes without control characters",
            );
        }
        for (name, value) in [
            ("full_name", &r.full_name),
            ("email", &r.email),
            ("phone", &r.phone),
            ("postal_code", &r.postal_code),
            ("language", &r.language),
        ] {
            if value.len() > MAX_PROFILE_FIELD_LEN {
                v.add(
                    format!("{path}.{name}"),
                    format!("at most {MAX_PROFILE_FIELD_LEN} bytes"),
                );
            }
        }
        let this_year = current_year();
        let birth_year = match r.birth_year {
            0 => None,
            y if (1900..=this_year).contains(&y) => Some(y as u16),
            _ => {
                v.add(
                    format!("{path}.birth_year"),
                    format!("must be 0 (unknown) or 1900 to {this_year} (the current year)"),
                );
                None
            }
        };
        v.into_result(Self {
            external_id: r.external_id,
            full_name: r.full_name,
            email: r.email,
            phone: r.phone,
            postal_code: r.postal_code,
            language: r.language,
            birth_year,
        })
    }
}

/// A validated survey answer.
#[derive(Clone, PartialEq, Eq)]
pub struct Survey {
    /// Survey id.
    pub survey_id: String,
    /// NPS 0..=10.
    pub nps: Option<u8>,
    /// CSAT 1..=5.
    pub csat: Option<u8>,
    /// CES 1..=7.
    pub ces: Option<u8>,
    /// Free text (personal data), possibly empty.
    pub comment: String,
}

/// A validated interaction.
#[derive(Clone, PartialEq, Eq)]
pub struct Interaction {
    /// The tenant's id of the interaction.
    pub interaction_id: String,
    /// The subject's external id.
    pub subject_id: String,
    /// Channel.
    pub channel: Channel,
    /// Direction.
    pub direction: Direction,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// End, Unix seconds.
    pub ended_at: Option<i64>,
    /// Handle time in seconds.
    pub handle_time_seconds: u32,
    /// Outcome code.
    pub outcome: String,
    /// Agent team.
    pub agent_team: String,
    /// Whether it was recorded.
    pub recorded: bool,
    /// Survey answer, if any.
    pub survey: Option<Survey>,
}

impl std::fmt::Debug for Interaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interaction")
            .field("channel", &self.channel)
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

fn score(
    value: Option<u32>,
    range: std::ops::RangeInclusive<u32>,
    field: String,
    v: &mut Violations,
) -> Option<u8> {
    match value {
        None => None,
        Some(x) if range.contains(&x) => Some(x as u8),
        Some(_) => {
            v.add(
                field,
                format!("must be {} to {}", range.start(), range.end()),
            );
            None
        }
    }
}

/// The seconds of a timestamp whose `nanos` must be a valid fraction (0 to 999,999,999, as
/// `google.protobuf.Timestamp` requires); a violation at `{field}.nanos` otherwise.
fn whole_second(ts: &prost_types::Timestamp, field: String, v: &mut Violations) -> i64 {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        v.add(format!("{field}.nanos"), "must be 0 to 999,999,999");
    }
    ts.seconds
}

fn timestamp(ts: &prost_types::Timestamp, field: String, v: &mut Violations) -> i64 {
    if !(MIN_TIMESTAMP..MAX_TIMESTAMP).contains(&ts.seconds)
        || !(0..1_000_000_000).contains(&ts.nanos)
    {
        v.add(field, "must be between 2000-01-01 and 2100-01-01 UTC");
    }
    ts.seconds
}

impl Interaction {
    /// Validates a sealed interaction payload; field paths start at `path`.
    pub fn validate(r: InteractionRecord, path: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        for (name, value) in [
            ("interaction_id", &r.interaction_id),
            ("subject_external_id", &r.subject_external_id),
        ] {
            if !is_valid_id(value) {
                v.add(
                    format!("{path}.{name}"),
                    "must be 1 to 128 bytes without control characters",
                );
            }
        }
        let channel = match Channel::try_from(r.channel) {
            Ok(Channel::Unspecified) | Err(_) => {
                v.add(
                    format!("{path}.channel"),
                    "required: a known Channel other than UNSPECIFIED",
                );
                Channel::Unspecified
            }
            Ok(c) => c,
        };
        let direction = Direction::try_from(r.direction).unwrap_or_else(|_| {
            v.add(
                format!("{path}.direction"),
                format!("unknown enum value {}", r.direction),
            );
            Direction::Unspecified
        });
        let started_at = match &r.started_at {
            Some(ts) => timestamp(ts, format!("{path}.started_at"), &mut v),
            None => {
                v.add(format!("{path}.started_at"), "required");
                0
            }
        };
        let ended_at = r.ended_at.as_ref().map(|ts| {
            let t = timestamp(ts, format!("{path}.ended_at"), &mut v);
            if t < started_at {
                v.add(format!("{path}.ended_at"), "must not be before started_at");
            }
            t
        });
        if r.handle_time_seconds > MAX_HANDLE_TIME_SECONDS {
            v.add(
                format!("{path}.handle_time_seconds"),
                format!("at most {MAX_HANDLE_TIME_SECONDS}"),
            );
        }
        for (name, value) in [("outcome", &r.outcome), ("agent_team", &r.agent_team)] {
            if !value.is_empty() && !is_code(value) {
                v.add(format!("{path}.{name}"), format!("empty or {CODE_RULE}"));
            }
        }
        let survey = r.survey.map(|s| {
            let sp = format!("{path}.survey");
            if !is_code(&s.survey_id) {
                v.add(format!("{sp}.survey_id"), format!("required, {CODE_RULE}"));
            }
            if s.comment.len() > MAX_COMMENT_LEN {
                v.add(
                    format!("{sp}.comment"),
                    format!("at most {MAX_COMMENT_LEN} bytes"),
                );
            }
            Survey {
                nps: score(s.nps, 0..=10, format!("{sp}.nps"), &mut v),
                csat: score(s.csat, 1..=5, format!("{sp}.csat"), &mut v),
                ces: score(s.ces, 1..=7, format!("{sp}.ces"), &mut v),
                survey_id: s.survey_id,
                comment: s.comment,
            }
        });
        v.into_result(Self {
            interaction_id: r.interaction_id,
            subject_id: r.subject_external_id,
            channel,
            direction,
            started_at,
            ended_at,
            handle_time_seconds: r.handle_time_seconds,
            outcome: r.outcome,
            agent_team: r.agent_team,
            recorded: r.recorded,
            survey,
        })
    }
}

/// The release window of an overview (`GetOverviewRequest.since` and `bucket_seconds`),
/// validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverviewWindow {
    /// Start, in seconds since the epoch.
    pub since: i64,
    /// Bucket width in seconds.
    pub bucket_seconds: u32,
}

impl OverviewWindow {
    /// The default bucket: an hour.
    pub const DEFAULT_BUCKET_SECONDS: u32 = 3_600;
    /// The furthest back a window may start: 92 days.
    pub const MAX_AGE_SECONDS: i64 = 92 * 86_400;
    /// The most buckets a window may span.
    pub const MAX_BUCKETS: i64 = 2_000;

    /// Validates `since` (unset: 24 hours before `now`) and `bucket_seconds` (0: an hour).
    pub fn parse(
        since: Option<&prost_types::Timestamp>,
        bucket_seconds: u32,
        now: i64,
    ) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let bucket = if bucket_seconds == 0 {
            Self::DEFAULT_BUCKET_SECONDS
        } else {
            bucket_seconds
        };
        if !(60..=86_400).contains(&bucket) {
            v.add("bucket_seconds", "must be 60 to 86400 seconds (0: 3600)");
        }
        let since = match since {
            None => now - 86_400,
            Some(t) if !(0..1_000_000_000).contains(&t.nanos) => {
                v.add("since.nanos", "must be 0 to 999,999,999");
                now
            }
            Some(t) => t.seconds,
        };
        if since > now {
            v.add("since", "must not be in the future");
        } else if now - since > Self::MAX_AGE_SECONDS {
            v.add("since", "must be at most 92 days ago");
        } else if (now - since) / i64::from(bucket.max(1)) >= Self::MAX_BUCKETS {
            v.add(
                "bucket_seconds",
                "too narrow for the window: at most 2,000 buckets from since to now",
            );
        }
        if v.is_empty() {
            Ok(Self {
                since,
                bucket_seconds: bucket,
            })
        } else {
            Err(v)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn years_of_unix_times() {
        assert_eq!(super::year_of(0), 1970);
        assert_eq!(super::year_of(-1), 1969);
        assert_eq!(super::year_of(951_782_400), 2000); // 2000-02-29
        assert_eq!(super::year_of(1_798_761_599), 2026); // 2026-12-31T23:59:59Z
        assert_eq!(super::year_of(1_798_761_600), 2027);
    }

    #[test]
    fn codes_admit_no_free_text() {
        for ok in [
            "resolved",
            "post-call",
            "tier1",
            "a",
            "nps.2026_q4",
            &"x".repeat(64),
        ] {
            assert!(super::is_code(ok), "{ok}");
        }
        for bad in [
            "",
            "Resolved",
            "called back",
            "jane@example.com",
            "-lead",
            ".x",
            "Müller",
            "a\nb",
            &"x".repeat(65),
        ] {
            assert!(!super::is_code(bad), "{bad:?}");
        }
    }

    #[test]
    fn overview_window_defaults_and_limits() {
        let now = 1_800_000_000;
        let w = OverviewWindow::parse(None, 0, now).unwrap();
        assert_eq!((w.since, w.bucket_seconds), (now - 86_400, 3_600));
        let at = |s: i64| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        };
        let w = OverviewWindow::parse(Some(&at(now - 3_600)), 60, now).unwrap();
        assert_eq!((w.since, w.bucket_seconds), (now - 3_600, 60));
        let field = |r: Result<OverviewWindow, Violations>| r.unwrap_err().0[0].field.clone();
        assert_eq!(
            field(OverviewWindow::parse(None, 59, now)),
            "bucket_seconds"
        );
        assert_eq!(
            field(OverviewWindow::parse(None, 86_401, now)),
            "bucket_seconds"
        );
        assert_eq!(
            field(OverviewWindow::parse(Some(&at(now + 1)), 60, now)),
            "since"
        );
        assert_eq!(
            field(OverviewWindow::parse(
                Some(&at(now - 93 * 86_400)),
                86_400,
                now
            )),
            "since"
        );
        // 30 days by the minute is 43,200 buckets.
        assert_eq!(
            field(OverviewWindow::parse(Some(&at(now - 30 * 86_400)), 60, now)),
            "bucket_seconds"
        );
        let bad_nanos = prost_types::Timestamp {
            seconds: now,
            nanos: -1,
        };
        assert_eq!(
            field(OverviewWindow::parse(Some(&bad_nanos), 60, now)),
            "since.nanos"
        );
    }

    use super::*;
    use crate::pb::SurveyAnswer;

    #[test]
    fn tenant_ids() {
        assert!(TenantId::parse("acme-eu_1", "tenant_id").is_ok());
        for bad in ["", "-acme", "Acme", "a b", &"a".repeat(64)] {
            let err = TenantId::parse(bad, "tenant_id").unwrap_err();
            assert_eq!(err.0[0].field, "tenant_id");
        }
    }

    #[test]
    fn aggregate_query_violations_name_each_field() {
        let q = AggregateQuery {
            purpose: 0,
            metrics: vec![Metric::Count as i32, 99, Metric::Count as i32],
            group_by: vec![0],
            ..Default::default()
        };
        let err = AggregateSpec::from_query(Some(&q), "query").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "query.purpose",
                "query.metrics[1]",
                "query.metrics[2]",
                "query.group_by[0]"
            ]
        );
    }

    #[test]
    fn interaction_scores_are_range_checked_without_echoing_values() {
        let r = InteractionRecord {
            interaction_id: "i1".into(),
            subject_external_id: "s1".into(),
            channel: Channel::Phone as i32,
            started_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            survey: Some(SurveyAnswer {
                survey_id: "relational".into(),
                nps: Some(11),
                csat: Some(0),
                comment: "call me at +49 170 1234567".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = Interaction::validate(r, "payload.interaction").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("payload.interaction.survey.nps: must be 0 to 10"));
        assert!(text.contains("payload.interaction.survey.csat: must be 1 to 5"));
        assert!(!text.contains("1234567"));
    }
}

/// Longest incident description, in characters.
pub const MAX_INCIDENT_DESCRIPTION: usize = 2_000;

/// A validated incident report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentSpec {
    /// The tenant.
    pub tenant: TenantId,
    /// Exposure window start (Unix seconds).
    pub start: i64,
    /// Exposure window end (Unix seconds, exclusive): data stored before it counts.
    pub end: i64,
    /// The data categories, without duplicates.
    pub categories: Vec<crate::pb::DataCategory>,
    /// What happened (no personal data).
    pub description: String,
    /// When the breach was detected (Unix seconds); `None`: now.
    pub detected_at: Option<i64>,
}

impl IncidentSpec {
    /// Validates a `ReportIncident` request (its `regions` are the gateway's to check).
    pub fn parse(r: &crate::pb::ReportIncidentRequest) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let tenant = TenantId::parse(&r.tenant_id, "tenant_id");
        let (start, end) = match &r.window {
            Some(w) => match (&w.start, &w.end) {
                (Some(s), Some(e))
                    if whole_second(s, "window.start".into(), &mut v)
                        < whole_second(e, "window.end".into(), &mut v) =>
                {
                    (s.seconds, e.seconds)
                }
                (Some(_), Some(_)) => {
                    v.add("window", "start must be before end");
                    (0, 0)
                }
                _ => {
                    v.add("window", "both start and end are required");
                    (0, 0)
                }
            },
            None => {
                v.add("window", "required");
                (0, 0)
            }
        };
        let categories = enum_list(
            &r.categories,
            "categories",
            &mut v,
            crate::pb::DataCategory::Unspecified,
        );
        if r.categories.is_empty() {
            v.add("categories", "at least one data category is required");
        }
        if let Some(t) = &r.detected_at {
            whole_second(t, "detected_at".into(), &mut v);
        }
        if r.description.chars().count() > MAX_INCIDENT_DESCRIPTION
            || r.description.chars().any(|c| c.is_control() && c != '\n')
        {
            v.add(
                "description",
                "at most 2,000 characters, no control characters but newlines",
            );
        }
        let tenant = match tenant {
            Ok(t) => Some(t),
            Err(e) => {
                v.0.splice(0..0, e.0);
                None
            }
        };
        let spec = Self {
            tenant: tenant.unwrap_or_else(|| TenantId("invalid".into())),
            start,
            end,
            categories,
            description: r.description.clone(),
            // Unset: when the DPO signed the report, the same for every region (the gateway
            // cannot fill it in without breaking the signature).
            detected_at: r
                .detected_at
                .as_ref()
                .or_else(|| r.dpo_signature.as_ref()?.signed_at.as_ref())
                .map(|t| t.seconds),
        };
        v.into_result(spec)
    }
}

/// True for an incident id: `inc-` and 32 lower-case hex characters.
pub fn is_incident_id(s: &str) -> bool {
    s.strip_prefix("inc-").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The current Unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A whole-second protobuf timestamp.
pub fn whole_seconds(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}
