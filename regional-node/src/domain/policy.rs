//! Country policies: what a node may do with its country's data, loaded from versioned TOML.
//!
//! One file per country (`deploy/policies/DE.toml`, …) says what may cross the border
//! (`aggregates_only` or `pseudonymised`), the minimum group size *k*, how quasi-identifiers are
//! generalised in pseudonymised records, whether differential privacy is mandatory and the daily
//! budget, consent rules per purpose × channel, the call-recording rule, retention and deadlines.
//! The shipped files are documented examples, not legal advice.
//!
//! A node loads the policies of its jurisdiction at start ([`PolicySet::load`]); a bad file
//! stops the start with a [`PolicyError`] naming the file, the line and the field. Every decision
//! a node takes records the policy `version` it was taken under.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use domicile_proto::pb::{Channel, Purpose};
use serde::Deserialize;
use toml::Spanned;

/// The policies compiled into the binary: the files of `deploy/policies/`, used when a node
/// configures no `policy_dir`.
pub const SHIPPED: &[(&str, &str)] = &[
    ("BR", include_str!("../../../deploy/policies/BR.toml")),
    ("CN", include_str!("../../../deploy/policies/CN.toml")),
    ("DE", include_str!("../../../deploy/policies/DE.toml")),
    ("ES", include_str!("../../../deploy/policies/ES.toml")),
    ("FR", include_str!("../../../deploy/policies/FR.toml")),
    ("GB", include_str!("../../../deploy/policies/GB.toml")),
    ("IN", include_str!("../../../deploy/policies/IN.toml")),
    ("IT", include_str!("../../../deploy/policies/IT.toml")),
    ("JP", include_str!("../../../deploy/policies/JP.toml")),
    ("NL", include_str!("../../../deploy/policies/NL.toml")),
    ("RU", include_str!("../../../deploy/policies/RU.toml")),
    ("US", include_str!("../../../deploy/policies/US.toml")),
];

/// What may cross the border from a country.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// Only aggregates (k-anonymous, possibly noised); `QueryRecords` is refused.
    AggregatesOnly,
    /// Aggregates and pseudonymised records.
    Pseudonymised,
}

/// How a birth year leaves the region in a pseudonymised record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BirthYear {
    /// The 10-year band, e.g. 1987 → 1980.
    Decade,
    /// Not released.
    Drop,
}

/// How timestamps leave the region in a pseudonymised record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeGranularity {
    /// Truncated to the hour.
    Hour,
    /// Truncated to the UTC day.
    Day,
}

impl TimeGranularity {
    /// `unix_seconds` truncated to this granularity.
    pub fn truncate(self, unix_seconds: i64) -> i64 {
        let step = match self {
            Self::Hour => 3_600,
            Self::Day => 86_400,
        };
        unix_seconds.div_euclid(step) * step
    }
}

/// A consent rule for one purpose on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentRule {
    /// No consent needed (another legal basis applies).
    None,
    /// Allowed unless the subject refused or withdrew.
    OptOut,
    /// Allowed only with a recorded grant.
    OptIn,
    /// Allowed only with a grant confirmed through a second step (e.g. an e-mailed link).
    DoubleOptIn,
}

/// Whose consent a call recording needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingRule {
    /// One party to the call (the organisation) suffices.
    OneParty,
    /// Every party, so the customer's consent must be on file.
    AllParties,
}

/// The rules of one purpose: a default and optional per-channel overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeRules {
    /// The rule on channels not listed.
    pub default: ConsentRule,
    /// Override for `phone`.
    pub phone: Option<ConsentRule>,
    /// Override for `email`.
    pub email: Option<ConsentRule>,
    /// Override for `chat`.
    pub chat: Option<ConsentRule>,
    /// Override for `sms`.
    pub sms: Option<ConsentRule>,
    /// Override for `web`.
    pub web: Option<ConsentRule>,
    /// Override for `app`.
    pub app: Option<ConsentRule>,
    /// Override for `post`.
    pub post: Option<ConsentRule>,
    /// Override for `in_person`.
    pub in_person: Option<ConsentRule>,
}

impl PurposeRules {
    /// The rule for `channel`.
    pub fn for_channel(&self, channel: Channel) -> ConsentRule {
        let over = match channel {
            Channel::Phone => self.phone,
            Channel::Email => self.email,
            Channel::Chat => self.chat,
            Channel::Sms => self.sms,
            Channel::Web => self.web,
            Channel::App => self.app,
            Channel::Post => self.post,
            Channel::InPerson => self.in_person,
            Channel::Unspecified => None,
        };
        over.unwrap_or(self.default)
    }
}

/// Consent rules for every purpose.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRules {
    /// `service` (contract performance).
    pub service: PurposeRules,
    /// `cx_survey`.
    pub cx_survey: PurposeRules,
    /// `cx_analytics`.
    pub cx_analytics: PurposeRules,
    /// `marketing`.
    pub marketing: PurposeRules,
    /// `profiling`.
    pub profiling: PurposeRules,
    /// `call_recording`.
    pub call_recording: PurposeRules,
}

impl ConsentRules {
    /// The rules of `purpose`, or `None` for `PURPOSE_UNSPECIFIED`.
    pub fn for_purpose(&self, purpose: Purpose) -> Option<&PurposeRules> {
        Some(match purpose {
            Purpose::Service => &self.service,
            Purpose::CxSurvey => &self.cx_survey,
            Purpose::CxAnalytics => &self.cx_analytics,
            Purpose::Marketing => &self.marketing,
            Purpose::Profiling => &self.profiling,
            Purpose::CallRecording => &self.call_recording,
            Purpose::Unspecified => return None,
        })
    }
}

/// What crosses the border, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BorderRules {
    /// `aggregates_only` or `pseudonymised`.
    pub release: Release,
    /// Minimum distinct subjects per released aggregate group; at least 2.
    pub min_group_size: Spanned<u32>,
    /// Birth year in pseudonymised records: `decade` or `drop`.
    pub birth_year: BirthYear,
    /// Timestamps in pseudonymised records: `hour` or `day`.
    pub timestamps: TimeGranularity,
    /// Leading characters of the postal code kept in pseudonymised records (0 to 3; 0 drops it).
    pub postal_code_prefix: Spanned<u8>,
}

/// Differential privacy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyRules {
    /// Epsilon of one release of a closed calendar month's cells (docs/privacy-model.md).
    pub epsilon_per_release_month: Spanned<f64>,
    /// Epsilon of one release of a closed UTC day's cells.
    pub epsilon_per_release_day: Spanned<f64>,
    /// The most epsilon all releases containing one calendar month of a person's data may
    /// spend together (the accountant's budget per tenant and month of data).
    pub epsilon_per_month: Spanned<f64>,
    /// Most interactions one subject contributes to one release (its first, in time order).
    pub max_contributions_per_subject: Spanned<u32>,
    /// Handle times are clamped to this many seconds in noised sums.
    pub handle_time_bound_seconds: Spanned<u32>,
}

/// The differential-privacy rules of a region's releases: the strictest of its countries'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseRules {
    /// Epsilon of a month release, in thousandths.
    pub month_milli: u32,
    /// Epsilon of a day release, in thousandths.
    pub day_milli: u32,
    /// The accountant's budget per tenant and month of data, in thousandths.
    pub budget_milli: u64,
    /// Contribution bound L: interactions per subject per release.
    pub max_contributions: u32,
    /// Handle-time clamp H, in seconds.
    pub handle_time_bound: u32,
}

/// Retention per data category, in days.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Customer profiles after the last interaction.
    pub profiles: u32,
    /// Interactions and survey scores.
    pub interactions: u32,
    /// Free-text comments.
    pub comments: u32,
    /// Call recordings (references).
    pub recordings: u32,
    /// The consent ledger, as evidence.
    pub consent_ledger: u32,
    /// Access and portability exports, kept (sealed to the requester) for fetching again.
    /// Default 30.
    #[serde(default = "default_export_days")]
    pub exports: u32,
}

fn default_export_days() -> u32 {
    30
}

/// Legal deadlines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    /// Days to answer a data-subject request (this or `subject_request_months`).
    #[serde(default)]
    pub subject_request_days: Option<Spanned<u32>>,
    /// Calendar months to answer a data-subject request (GDPR Art. 12(3): one month).
    #[serde(default)]
    pub subject_request_months: Option<Spanned<u32>>,
    /// Days a request's deadline may be extended by, once, with a reason (none: no extension).
    #[serde(default)]
    pub subject_request_extension_days: Option<Spanned<u32>>,
    /// Calendar months a request's deadline may be extended by (GDPR: two further months).
    #[serde(default)]
    pub subject_request_extension_months: Option<Spanned<u32>>,
    /// Whether the deadline pauses while the tenant waits for the subject (identity evidence,
    /// a clarification), as the law allows. Default false: the clock runs from receipt.
    #[serde(default)]
    pub pause_awaiting_subject: bool,
    /// Hours to notify the authority of a personal-data breach.
    pub breach_notification_hours: Spanned<u32>,
}

impl Deadlines {
    /// The time to answer a subject request.
    pub fn subject_request(&self) -> Period {
        Period::of(&self.subject_request_days, &self.subject_request_months)
    }

    /// The extension a subject request may get, if any.
    pub fn subject_request_extension(&self) -> Option<Period> {
        let p = Period::of(
            &self.subject_request_extension_days,
            &self.subject_request_extension_months,
        );
        (p != Period::default()).then_some(p)
    }
}

/// A legal time limit: calendar months, or days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    /// Calendar months.
    pub months: u32,
    /// Days.
    pub days: u32,
}

impl Period {
    fn of(days: &Option<Spanned<u32>>, months: &Option<Spanned<u32>>) -> Self {
        Self {
            months: months.as_ref().map_or(0, |m| *m.get_ref()),
            days: days.as_ref().map_or(0, |d| *d.get_ref()),
        }
    }

    /// `at` (Unix seconds) plus this period, in UTC: months by the calendar (the same day of
    /// the month, or the month's last day when it has no such day, as EU Regulation 1182/71
    /// counts), then days.
    pub fn after(self, at: i64) -> i64 {
        let day = at.div_euclid(86_400);
        let time = at.rem_euclid(86_400);
        let (y, m, d) = domicile_proto::domain::civil_from_days(day);
        let months = y * 12 + (m - 1) + i64::from(self.months);
        let (y, m) = (months.div_euclid(12), months.rem_euclid(12) + 1);
        let d = d.min(domicile_proto::domain::days_in_month(y, m));
        (domicile_proto::domain::days_from_civil(y, m, d) + i64::from(self.days)) * 86_400 + time
    }

    /// As policies and receipts say it, e.g. "1 month", "45 days".
    pub fn describe(self) -> String {
        let unit = |n: u32, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
        match (self.months, self.days) {
            (0, d) => unit(d, "day"),
            (m, 0) => unit(m, "month"),
            (m, d) => format!("{} and {}", unit(m, "month"), unit(d, "day")),
        }
    }
}

/// What an incident report releases across the border (GDPR Art. 33(3)(a) allows approximate
/// numbers): counts rounded up, windows widened to whole periods, reports per day bounded, so
/// that two reports cannot be subtracted to learn about one subject.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentRules {
    /// Affected counts are rounded up to a multiple of this (0 stays 0). Default 10.
    #[serde(default = "default_count_granularity")]
    pub count_granularity: Spanned<u32>,
    /// Exposure windows are widened to whole periods of this many seconds. Default 3600.
    #[serde(default = "default_window_seconds")]
    pub window_seconds: Spanned<u32>,
    /// Incident reports a tenant may file per UTC day in the region. Default 20.
    #[serde(default = "default_reports_per_day")]
    pub max_reports_per_day: Spanned<u32>,
}

fn default_count_granularity() -> Spanned<u32> {
    Spanned::new(0..0, 10)
}
fn default_window_seconds() -> Spanned<u32> {
    Spanned::new(0..0, 3600)
}
fn default_reports_per_day() -> Spanned<u32> {
    Spanned::new(0..0, 20)
}

impl Default for IncidentRules {
    fn default() -> Self {
        Self {
            count_granularity: default_count_granularity(),
            window_seconds: default_window_seconds(),
            max_reports_per_day: default_reports_per_day(),
        }
    }
}

/// What an erasure keeps (docs/erasure.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureRules {
    /// When a subject who had refused, withdrawn or objected is erased, keep a suppression
    /// entry (keyed hashes of the external id and of each contact identifier, the purpose,
    /// channel and day; nothing in clear), so that the same person sent again is not contacted
    /// under that purpose. Default true.
    #[serde(default = "default_true")]
    pub keep_suppression: bool,
}

fn default_true() -> bool {
    true
}

impl Default for ErasureRules {
    fn default() -> Self {
        Self {
            keep_suppression: true,
        }
    }
}

/// Call-recording consent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// `one_party` or `all_parties`.
    pub rule: RecordingRule,
}

/// One country's policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountryPolicy {
    /// ISO 3166-1 alpha-2 code; must match the file name.
    pub country: Spanned<String>,
    /// Version recorded with every decision, e.g. `2026-11-01`.
    pub version: Spanned<String>,
    /// A line saying what the file is.
    #[serde(default)]
    pub description: String,
    /// Border rules.
    pub border: BorderRules,
    /// Differential privacy.
    pub privacy: PrivacyRules,
    /// Consent per purpose and channel.
    pub consent: ConsentRules,
    /// Call recording.
    pub recording: Recording,
    /// Retention.
    pub retention: Retention,
    /// Deadlines.
    pub deadlines: Deadlines,
    /// What incident reports release (defaults when the section is absent).
    #[serde(default)]
    pub incidents: IncidentRules,
    /// What an erasure keeps (defaults when the section is absent).
    #[serde(default)]
    pub erasure: ErasureRules,
}

impl CountryPolicy {
    /// The country code.
    pub fn country(&self) -> &str {
        self.country.get_ref()
    }

    /// The version.
    pub fn version(&self) -> &str {
        self.version.get_ref()
    }

    /// *k* for this country.
    pub fn min_group_size(&self) -> u32 {
        *self.border.min_group_size.get_ref()
    }

    /// The version label recorded with decisions: `DE@2026-11-01`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.country(), self.version())
    }

    /// The country of a version [`label`](Self::label): `DE` for `DE@2026-11-01`.
    pub fn country_of_label(label: &str) -> &str {
        label.split_once('@').map_or(label, |(country, _)| country)
    }

    /// Parses and checks `text`, read from `file`, which must be `expected_country`'s policy.
    pub fn parse(text: &str, file: &Path, expected_country: &str) -> Result<Self, PolicyError> {
        let policy: Self = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            PolicyError {
                file: file.to_owned(),
                line,
                field: line.map(|l| field_at(text, l)).unwrap_or_default(),
                message: e.message().to_owned(),
            }
        })?;
        policy.check(text, file, expected_country)?;
        Ok(policy)
    }

    fn check(&self, text: &str, file: &Path, expected: &str) -> Result<(), PolicyError> {
        let fail = |span: std::ops::Range<usize>, field: &str, message: String| {
            Err(PolicyError {
                file: file.to_owned(),
                line: Some(line_of(text, span.start)),
                field: field.to_owned(),
                message,
            })
        };
        if self.country() != expected {
            return fail(
                self.country.span(),
                "country",
                format!("must be {expected}, the file's country"),
            );
        }
        let version = self.version();
        if version.is_empty()
            || version.len() > 32
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return fail(
                self.version.span(),
                "version",
                "must be 1 to 32 characters of A-Z, a-z, 0-9, '-', '.' and '_'".into(),
            );
        }
        let b = &self.border;
        if !(2..=1_000).contains(b.min_group_size.get_ref()) {
            return fail(
                b.min_group_size.span(),
                "border.min_group_size",
                "must be 2 to 1000".into(),
            );
        }
        if *b.postal_code_prefix.get_ref() > 3 {
            return fail(
                b.postal_code_prefix.span(),
                "border.postal_code_prefix",
                "must be 0 to 3".into(),
            );
        }
        let p = &self.privacy;
        for (value, field) in [
            (
                &p.epsilon_per_release_month,
                "privacy.epsilon_per_release_month",
            ),
            (
                &p.epsilon_per_release_day,
                "privacy.epsilon_per_release_day",
            ),
        ] {
            let eps = *value.get_ref();
            if !(eps.is_finite() && (0.001..=10.0).contains(&eps)) {
                return fail(value.span(), field, "must be 0.001 to 10".into());
            }
        }
        let budget = *p.epsilon_per_month.get_ref();
        let largest = p
            .epsilon_per_release_month
            .get_ref()
            .max(*p.epsilon_per_release_day.get_ref());
        if !(budget.is_finite() && budget >= largest && budget <= 1_000.0) {
            return fail(
                p.epsilon_per_month.span(),
                "privacy.epsilon_per_month",
                "must be at least each release's epsilon and at most 1000".into(),
            );
        }
        if !(1..=10_000).contains(p.max_contributions_per_subject.get_ref()) {
            return fail(
                p.max_contributions_per_subject.span(),
                "privacy.max_contributions_per_subject",
                "must be 1 to 10000".into(),
            );
        }
        if !(1..=86_400).contains(p.handle_time_bound_seconds.get_ref()) {
            return fail(
                p.handle_time_bound_seconds.span(),
                "privacy.handle_time_bound_seconds",
                "must be 1 to 86400".into(),
            );
        }
        if !(1..=3650).contains(&self.retention.exports) {
            return fail(
                self.country.span(),
                "retention.exports",
                "must be 1 to 3650 (days)".into(),
            );
        }
        let d = &self.deadlines;
        for (period, extension) in [(true, false), (false, true)] {
            let (days, months, name) = if extension {
                (
                    &d.subject_request_extension_days,
                    &d.subject_request_extension_months,
                    "deadlines.subject_request_extension",
                )
            } else {
                (
                    &d.subject_request_days,
                    &d.subject_request_months,
                    "deadlines.subject_request",
                )
            };
            match (days, months) {
                (Some(_), Some(m)) => {
                    return fail(
                        m.span(),
                        &format!("{name}_months"),
                        format!("give {name}_days or {name}_months, not both"),
                    );
                }
                (None, None) if period => {
                    return fail(
                        d.breach_notification_hours.span(),
                        "deadlines.subject_request_days",
                        "required: subject_request_days or subject_request_months".into(),
                    );
                }
                (Some(n), None) if !(1..=365).contains(n.get_ref()) => {
                    return fail(n.span(), &format!("{name}_days"), "must be 1 to 365".into());
                }
                (None, Some(n)) if !(1..=12).contains(n.get_ref()) => {
                    return fail(
                        n.span(),
                        &format!("{name}_months"),
                        "must be 1 to 12".into(),
                    );
                }
                _ => {}
            }
        }
        if !(1..=720).contains(d.breach_notification_hours.get_ref()) {
            return fail(
                d.breach_notification_hours.span(),
                "deadlines.breach_notification_hours",
                "must be 1 to 720".into(),
            );
        }
        let i = &self.incidents;
        if !(1..=10_000).contains(i.count_granularity.get_ref()) {
            return fail(
                i.count_granularity.span(),
                "incidents.count_granularity",
                "must be 1 to 10000".into(),
            );
        }
        if !(60..=86_400).contains(i.window_seconds.get_ref())
            || 86_400 % i.window_seconds.get_ref() != 0
        {
            return fail(
                i.window_seconds.span(),
                "incidents.window_seconds",
                "must divide a day, 60 to 86400".into(),
            );
        }
        if !(1..=1_000).contains(i.max_reports_per_day.get_ref()) {
            return fail(
                i.max_reports_per_day.span(),
                "incidents.max_reports_per_day",
                "must be 1 to 1000".into(),
            );
        }
        Ok(())
    }
}

/// A policy file that cannot be used: the file, the line and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted field path, e.g. `border.min_group_size`; empty when unknown.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message.trim_end())
    }
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The dotted key defined on 1-based `line`: the nearest `[table]` header above it and the key
/// left of `=` on the line (the table alone for a header line).
fn field_at(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(current) = lines.get(line.saturating_sub(1)) else {
        return String::new();
    };
    let header = |l: &str| {
        let t = l.trim();
        (t.starts_with('[') && t.ends_with(']')).then(|| t.trim_matches(['[', ']']).to_owned())
    };
    if let Some(table) = header(current) {
        return table;
    }
    let key = current.split('=').next().unwrap_or("").trim().to_owned();
    let table = lines[..line.saturating_sub(1)]
        .iter()
        .rev()
        .find_map(|l| header(l));
    match table {
        Some(t) if !key.is_empty() => format!("{t}.{key}"),
        Some(t) => t,
        None => key,
    }
}

/// The policies of one node's countries.
#[derive(Debug, Clone)]
pub struct PolicySet {
    by_country: BTreeMap<String, CountryPolicy>,
}

impl PolicySet {
    /// Loads the policy of each country from `dir` (`<dir>/<CC>.toml`), or from the shipped
    /// policies when `dir` is `None`.
    pub fn load(dir: Option<&Path>, countries: &[String]) -> Result<Self, PolicyError> {
        let mut by_country = BTreeMap::new();
        for country in countries {
            let (file, text) = match dir {
                Some(dir) => {
                    let file = dir.join(format!("{country}.toml"));
                    let text = std::fs::read_to_string(&file).map_err(|e| PolicyError {
                        file: file.clone(),
                        line: None,
                        field: String::new(),
                        message: format!("cannot read: {e}"),
                    })?;
                    (file, text)
                }
                None => {
                    let file = PathBuf::from(format!("deploy/policies/{country}.toml (built in)"));
                    let text = SHIPPED
                        .iter()
                        .find(|(c, _)| c == country)
                        .map(|(_, t)| (*t).to_owned())
                        .ok_or_else(|| PolicyError {
                            file: file.clone(),
                            line: None,
                            field: String::new(),
                            message: "no shipped policy for this country; set policy_dir".into(),
                        })?;
                    (file, text)
                }
            };
            by_country.insert(
                country.clone(),
                CountryPolicy::parse(&text, &file, country)?,
            );
        }
        Ok(Self { by_country })
    }

    /// The policy of `country`, if it is one of the node's.
    pub fn get(&self, country: &str) -> Option<&CountryPolicy> {
        self.by_country.get(country)
    }

    /// All policies, by country.
    pub fn iter(&self) -> impl Iterator<Item = &CountryPolicy> {
        self.by_country.values()
    }

    /// The largest *k* over the node's countries: what a group mixing countries must meet.
    pub fn max_min_group_size(&self) -> u32 {
        self.iter()
            .map(CountryPolicy::min_group_size)
            .max()
            .unwrap_or(2)
    }

    /// The region's release rules: the strictest of its countries' privacy sections.
    pub fn release_rules(&self) -> ReleaseRules {
        let strictest = |f: fn(&PrivacyRules) -> f64| {
            let v = self
                .iter()
                .map(|p| f(&p.privacy))
                .fold(f64::INFINITY, f64::min);
            // Thousandths, rounded down: only ever less epsilon than the policy says.
            if v.is_finite() {
                (v * 1000.0) as u32
            } else {
                0
            }
        };
        let min_u32 =
            |f: fn(&PrivacyRules) -> u32| self.iter().map(|p| f(&p.privacy)).min().unwrap_or(1);
        ReleaseRules {
            month_milli: strictest(|p| *p.epsilon_per_release_month.get_ref()),
            day_milli: strictest(|p| *p.epsilon_per_release_day.get_ref()),
            budget_milli: u64::from(strictest(|p| *p.epsilon_per_month.get_ref())),
            max_contributions: min_u32(|p| *p.max_contributions_per_subject.get_ref()),
            handle_time_bound: min_u32(|p| *p.handle_time_bound_seconds.get_ref()),
        }
    }

    /// Whether an erasure of a subject of `country` keeps a suppression (`[erasure]
    /// keep_suppression`); false for a country the node has no policy for, or none known.
    pub fn keeps_suppression(&self, country: Option<&str>) -> bool {
        country
            .and_then(|c| self.get(c))
            .is_some_and(|p| p.erasure.keep_suppression)
    }

    /// Version labels of all policies, e.g. `["DE@2026-11-01"]`.
    pub fn labels(&self) -> Vec<String> {
        self.iter().map(CountryPolicy::label).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(country: &str) -> String {
        SHIPPED
            .iter()
            .find(|(c, _)| *c == country)
            .unwrap()
            .1
            .to_owned()
    }

    #[test]
    fn every_shipped_policy_loads() {
        let countries: Vec<String> = SHIPPED.iter().map(|(c, _)| (*c).to_owned()).collect();
        let set = PolicySet::load(None, &countries).unwrap();
        assert_eq!(set.iter().count(), 12);
        for c in ["RU", "CN"] {
            assert_eq!(set.get(c).unwrap().border.release, Release::AggregatesOnly);
        }
        assert_eq!(
            set.get("DE").unwrap().border.release,
            Release::Pseudonymised
        );
    }

    #[test]
    fn shipped_files_match_the_compiled_ones() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
        let countries: Vec<String> = SHIPPED.iter().map(|(c, _)| (*c).to_owned()).collect();
        let from_dir = PolicySet::load(Some(&dir), &countries).unwrap();
        assert_eq!(
            from_dir.labels(),
            PolicySet::load(None, &countries).unwrap().labels()
        );
    }

    #[test]
    fn a_bad_value_names_file_line_and_field() {
        let text = shipped("DE").replace("min_group_size = 10", "min_group_size = 1");
        let line = text
            .lines()
            .position(|l| l.starts_with("min_group_size"))
            .unwrap()
            + 1;
        let e = CountryPolicy::parse(&text, Path::new("DE.toml"), "DE").unwrap_err();
        assert_eq!(e.line, Some(line));
        assert_eq!(e.field, "border.min_group_size");
        assert!(
            e.to_string()
                .starts_with(&format!("DE.toml:{line}: border.min_group_size"))
        );
    }

    #[test]
    fn an_unknown_rule_names_its_field() {
        let text = shipped("FR").replace("rule = \"all_parties\"", "rule = \"nobody\"");
        let e = CountryPolicy::parse(&text, Path::new("FR.toml"), "FR").unwrap_err();
        assert_eq!(e.field, "recording.rule", "{e}");
        assert!(e.message.contains("nobody"), "{e}");
        assert!(e.line.is_some());
    }

    #[test]
    fn a_file_for_another_country_is_refused() {
        let e = CountryPolicy::parse(&shipped("DE"), Path::new("FR.toml"), "FR").unwrap_err();
        assert_eq!(e.field, "country");
    }

    #[test]
    fn a_missing_section_is_named() {
        let text = shipped("US");
        let cut = text.find("[deadlines]").unwrap();
        let e = CountryPolicy::parse(&text[..cut], Path::new("US.toml"), "US").unwrap_err();
        assert!(e.message.contains("deadlines"), "{e}");
    }

    proptest::proptest! {
        /// A damaged policy file is an error naming the file, never a panic.
        #[test]
        fn a_damaged_file_never_panics(cut in 0usize..3_000, junk in "\\PC{0,20}") {
            let text = shipped("DE");
            let mut cut = cut.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let damaged = format!("{}{junk}{}", &text[..cut], &text[cut..]);
            if let Err(e) = CountryPolicy::parse(&damaged, Path::new("DE.toml"), "DE") {
                proptest::prop_assert_eq!(e.file, PathBuf::from("DE.toml"));
            }
        }
    }

    #[test]
    fn truncation_is_to_the_hour_or_day() {
        assert_eq!(TimeGranularity::Hour.truncate(7_199), 3_600);
        assert_eq!(TimeGranularity::Day.truncate(86_401), 86_400);
    }
}
