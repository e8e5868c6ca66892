//! The consent ledger and contact-permission decisions.
//!
//! Every change is appended to `consent_ledger` (append-only: SQLite triggers refuse updates
//! and deletes) and mirrored, in the same transaction, into `consent_state`, the current state
//! per subject × purpose × channel that decisions read. An entry on channel 0 (unspecified)
//! applies to every channel of its purpose; for a given channel the latest of its own and the
//! channel-0 entry wins.
//!
//! [`allows`] is the whole decision: a country rule and a consent state in, allowed or not out.
//! [`gate`] turns the same rule into SQL, so that aggregates and records under a purpose only
//! include the subjects whose policy and consent permit it.

use crate::store::db::{Connection, OptionalExtension, Query, params};
use domicile_proto::{
    consent::{Confirmation, ConsentChange, ConsentQuestion},
    domain::whole_seconds as ts,
    pb::{
        Channel, CheckContactPermissionResponse, ConsentAction, ConsentEntry,
        ConsentRule as WireRule, ConsentSource, ConsentState, ConsentStatus, GetConsentResponse,
        PermissionReason, PermissionReasonCode, Purpose,
    },
};
use sha2::{Digest, Sha256};

use crate::{
    domain::policy::{ConsentRule, CountryPolicy, PolicySet},
    error::NodeError,
    store::vault::KeptSuppression,
};

/// The consent tables; created with the rest of the schema.
pub const SCHEMA_SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS consent_ledger (
    tenant         TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    purpose        INTEGER NOT NULL,
    channel        INTEGER NOT NULL,
    action         INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    source         INTEGER NOT NULL,
    wording_sha256 BLOB,
    policy_version TEXT NOT NULL,
    actor          TEXT NOT NULL,
    state          INTEGER NOT NULL,
    PRIMARY KEY (tenant, subject_id, seq)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS consent_ledger_no_update BEFORE UPDATE ON consent_ledger
BEGIN SELECT RAISE(ABORT, 'the consent ledger is append-only'); END;
-- Deletes happen only inside an erasure, which raises this guard for its own transaction.
CREATE TABLE IF NOT EXISTS erasure_guard (active INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS consent_ledger_no_delete BEFORE DELETE ON consent_ledger
WHEN NOT EXISTS (SELECT 1 FROM erasure_guard)
BEGIN SELECT RAISE(ABORT, 'the consent ledger is append-only'); END;

-- Derived from the ledger in the same transaction as each append: the latest entry per
-- subject, purpose and channel.
CREATE TABLE IF NOT EXISTS consent_state (
    tenant         TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    purpose        INTEGER NOT NULL,
    channel        INTEGER NOT NULL,
    state          INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    since          INTEGER NOT NULL,
    policy_version TEXT NOT NULL,
    PRIMARY KEY (tenant, subject_id, purpose, channel)
) WITHOUT ROWID;
-- The console's counts per policy, purpose, channel and state (`overview::consents`):
-- `consent_state` counted as it changes, by triggers, so that the console reads a few rows
-- rather than one per subject.
CREATE TABLE IF NOT EXISTS consent_counts (
    tenant         TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    purpose        INTEGER NOT NULL,
    channel        INTEGER NOT NULL,
    state          INTEGER NOT NULL,
    subjects       INTEGER NOT NULL,
    PRIMARY KEY (tenant, policy_version, purpose, channel, state)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS consent_counts_on_insert AFTER INSERT ON consent_state
BEGIN
  INSERT INTO consent_counts (tenant, policy_version, purpose, channel, state, subjects)
  VALUES (NEW.tenant, NEW.policy_version, NEW.purpose, NEW.channel, NEW.state, 1)
  ON CONFLICT (tenant, policy_version, purpose, channel, state)
  DO UPDATE SET subjects = subjects + 1;
END;
CREATE TRIGGER IF NOT EXISTS consent_counts_on_update AFTER UPDATE ON consent_state
BEGIN
  UPDATE consent_counts SET subjects = subjects - 1
  WHERE tenant = OLD.tenant AND policy_version = OLD.policy_version AND purpose = OLD.purpose
    AND channel = OLD.channel AND state = OLD.state;
  INSERT INTO consent_counts (tenant, policy_version, purpose, channel, state, subjects)
  VALUES (NEW.tenant, NEW.policy_version, NEW.purpose, NEW.channel, NEW.state, 1)
  ON CONFLICT (tenant, policy_version, purpose, channel, state)
  DO UPDATE SET subjects = subjects + 1;
END;
CREATE TRIGGER IF NOT EXISTS consent_counts_on_delete AFTER DELETE ON consent_state
BEGIN
  UPDATE consent_counts SET subjects = subjects - 1
  WHERE tenant = OLD.tenant AND policy_version = OLD.policy_version AND purpose = OLD.purpose
    AND channel = OLD.channel AND state = OLD.state;
END;

-- What an erasure keeps of a subject who had refused, withdrawn or objected (the country
-- policy's `[erasure] keep_suppression`): per keyed hash of the external id or of a contact
-- identifier (`Pseudonymiser::suppression_id`), the purpose and channel, the state it stands
-- for and the day it was made. Nothing in clear.
CREATE TABLE IF NOT EXISTS suppressions (
    tenant     TEXT NOT NULL,
    identifier TEXT NOT NULL,
    purpose    INTEGER NOT NULL,
    channel    INTEGER NOT NULL,
    state      INTEGER NOT NULL,
    since_day  INTEGER NOT NULL,
    PRIMARY KEY (tenant, identifier, purpose, channel)
) WITHOUT ROWID;

-- Double opt-in tokens: only their SHA-256 is kept.
CREATE TABLE IF NOT EXISTS consent_tokens (
    token_sha256 BLOB PRIMARY KEY,
    tenant       TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    purpose      INTEGER NOT NULL,
    channel      INTEGER NOT NULL,
    request_seq  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER
) WITHOUT ROWID;
"#;

/// The same tables for PostgreSQL (`BIGINT` integers, `BYTEA` bytes, identity columns); the
/// triggers are PL/pgSQL, in [`crate::domain::schema`]. The store contract test checks that
/// both engines end up with the same tables, columns, keys and indexes.
pub const SCHEMA_POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS consent_ledger (
    tenant         TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    purpose        BIGINT NOT NULL,
    channel        BIGINT NOT NULL,
    action         BIGINT NOT NULL,
    recorded_at    BIGINT NOT NULL,
    source         BIGINT NOT NULL,
    wording_sha256 BYTEA,
    policy_version TEXT NOT NULL,
    actor          TEXT NOT NULL,
    state          BIGINT NOT NULL,
    PRIMARY KEY (tenant, subject_id, seq)
);

CREATE TABLE IF NOT EXISTS erasure_guard (active BIGINT NOT NULL);

CREATE TABLE IF NOT EXISTS consent_state (
    tenant         TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    purpose        BIGINT NOT NULL,
    channel        BIGINT NOT NULL,
    state          BIGINT NOT NULL,
    seq            BIGINT NOT NULL,
    since          BIGINT NOT NULL,
    policy_version TEXT NOT NULL,
    PRIMARY KEY (tenant, subject_id, purpose, channel)
);

CREATE TABLE IF NOT EXISTS consent_counts (
    tenant         TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    purpose        BIGINT NOT NULL,
    channel        BIGINT NOT NULL,
    state          BIGINT NOT NULL,
    subjects       BIGINT NOT NULL,
    PRIMARY KEY (tenant, policy_version, purpose, channel, state)
);

CREATE TABLE IF NOT EXISTS suppressions (
    tenant     TEXT NOT NULL,
    identifier TEXT NOT NULL,
    purpose    BIGINT NOT NULL,
    channel    BIGINT NOT NULL,
    state      BIGINT NOT NULL,
    since_day  BIGINT NOT NULL,
    PRIMARY KEY (tenant, identifier, purpose, channel)
);

CREATE TABLE IF NOT EXISTS consent_tokens (
    token_sha256 BYTEA PRIMARY KEY,
    tenant       TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    purpose      BIGINT NOT NULL,
    channel      BIGINT NOT NULL,
    request_seq  BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);
"#;

/// Whether `rule` allows processing for a subject in `state`. The whole decision.
pub fn allows(rule: ConsentRule, state: ConsentState) -> bool {
    use ConsentState as S;
    match rule {
        ConsentRule::None => state != S::Objected,
        ConsentRule::OptOut => !matches!(state, S::Refused | S::Withdrawn | S::Objected),
        ConsentRule::OptIn => matches!(state, S::Granted | S::GrantedConfirmed),
        ConsentRule::DoubleOptIn => state == S::GrantedConfirmed,
    }
}

/// The wire form of a policy rule.
pub fn wire_rule(rule: ConsentRule) -> WireRule {
    match rule {
        ConsentRule::None => WireRule::None,
        ConsentRule::OptOut => WireRule::OptOut,
        ConsentRule::OptIn => WireRule::OptIn,
        ConsentRule::DoubleOptIn => WireRule::DoubleOptIn,
    }
}

/// The state an entry leads to.
fn state_after(action: ConsentAction) -> ConsentState {
    match action {
        ConsentAction::Grant => ConsentState::Granted,
        ConsentAction::Refuse => ConsentState::Refused,
        ConsentAction::Withdraw => ConsentState::Withdrawn,
        ConsentAction::DoubleOptInRequest => ConsentState::PendingConfirmation,
        ConsentAction::DoubleOptInConfirm => ConsentState::GrantedConfirmed,
        ConsentAction::Object => ConsentState::Objected,
        ConsentAction::Unspecified => ConsentState::Unspecified,
    }
}

/// The rule of `policy` for `purpose` on `channel` (`Unspecified`: the purpose's default).
pub fn rule_of(policy: &CountryPolicy, purpose: Purpose, channel: Channel) -> ConsentRule {
    policy
        .consent
        .for_purpose(purpose)
        .map_or(ConsentRule::OptIn, |r| r.for_channel(channel))
}

/// The current state for `purpose` on `channel`, with the time and policy of its entry: the
/// latest of the channel's own entry and the every-channel entry.
pub fn current(
    conn: &Connection,
    tenant: &str,
    subject: &str,
    purpose: Purpose,
    channel: Channel,
) -> Result<(ConsentState, Option<i64>), NodeError> {
    let mut stmt = conn.prepare_cached(
        "SELECT state, since FROM consent_state
         WHERE tenant = $1 AND subject_id = $2 AND purpose = $3 AND channel IN ($4, 0)
         ORDER BY seq DESC LIMIT 1",
    )?;
    let row = stmt
        .query_row(
            params![tenant, subject, purpose as i32, channel as i32],
            |r| Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((state, since)) => (
            ConsentState::try_from(state).unwrap_or(ConsentState::Unspecified),
            Some(since),
        ),
        None => (ConsentState::None, None),
    })
}

/// Appends one entry and updates the derived state, in the caller's transaction.
#[allow(clippy::too_many_arguments)]
fn append(
    tx: &Connection,
    tenant: &str,
    subject: &str,
    purpose: Purpose,
    channel: Channel,
    action: ConsentAction,
    source: ConsentSource,
    wording: Option<&[u8; 32]>,
    policy_version: &str,
    actor: &str,
    at: i64,
) -> Result<ConsentEntry, NodeError> {
    let seq: i64 = tx.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM consent_ledger WHERE tenant = $1 AND subject_id = $2",
        params![tenant, subject],
        |r| r.get(0),
    )?;
    let state = state_after(action);
    tx.execute(
        "INSERT INTO consent_ledger (tenant, subject_id, seq, purpose, channel, action, recorded_at,
           source, wording_sha256, policy_version, actor, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        params![
            tenant,
            subject,
            seq,
            purpose as i32,
            channel as i32,
            action as i32,
            at,
            source as i32,
            wording.map(|w| w.as_slice()),
            policy_version,
            actor,
            state as i32
        ],
    )?;
    tx.execute(
        "INSERT INTO consent_state (tenant, subject_id, purpose, channel, state, seq, since, policy_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (tenant, subject_id, purpose, channel) DO UPDATE SET
           state = excluded.state, seq = excluded.seq, since = excluded.since,
           policy_version = excluded.policy_version",
        params![
            tenant,
            subject,
            purpose as i32,
            channel as i32,
            state as i32,
            seq,
            at,
            policy_version
        ],
    )?;
    Ok(ConsentEntry {
        seq: seq as u64,
        action: action as i32,
        purpose: purpose as i32,
        channel: channel as i32,
        recorded_at: Some(ts(at)),
        source: source as i32,
        wording_sha256: wording.map(|w| w.to_vec()).unwrap_or_default(),
        policy_version: policy_version.to_owned(),
        actor: actor.to_owned(),
        resulting_state: state as i32,
    })
}

/// What recording a change did.
#[derive(Debug)]
pub struct Recorded {
    /// The entry appended.
    pub entry: ConsentEntry,
    /// The state now.
    pub state: ConsentState,
    /// A double opt-in token and its expiry, when one was issued.
    pub token: Option<(String, i64)>,
}

/// Records `change` (grant, refuse, object or withdraw). A grant where the rule is double
/// opt-in becomes a request, and a single-use token `<region>.<secret>` is issued.
pub fn record(
    tx: &Connection,
    region_id: &str,
    policy: &CountryPolicy,
    change: &ConsentChange,
    at: i64,
) -> Result<Recorded, NodeError> {
    let rule = rule_of(policy, change.purpose, change.channel);
    let action = match change.action {
        ConsentAction::Grant if rule == ConsentRule::DoubleOptIn => {
            ConsentAction::DoubleOptInRequest
        }
        a => a,
    };
    let entry = append(
        tx,
        change.tenant.as_str(),
        &change.subject.external_id,
        change.purpose,
        change.channel,
        action,
        change.source,
        change.wording_sha256.as_ref(),
        &policy.label(),
        &change.actor,
        at,
    )?;
    let token = if action == ConsentAction::DoubleOptInRequest {
        let mut secret = [0u8; 24];
        getrandom::fill(&mut secret)
            .map_err(|e| NodeError::Internal(format!("randomness: {e}")))?;
        let token = format!("{region_id}.{}", base64url(&secret));
        let expires = at + i64::from(change.token_ttl_seconds);
        tx.execute(
            "INSERT INTO consent_tokens (token_sha256, tenant, subject_id, purpose, channel,
               request_seq, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            params![
                Sha256::digest(token.as_bytes()).as_slice(),
                change.tenant.as_str(),
                change.subject.external_id,
                change.purpose as i32,
                change.channel as i32,
                entry.seq as i64,
                expires
            ],
        )?;
        Some((token, expires))
    } else {
        None
    };
    Ok(Recorded {
        state: state_after(action),
        entry,
        token,
    })
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Confirms a double opt-in: the token must exist for this tenant, be unused, unexpired, and
/// its request must still be the latest entry for its purpose and channel.
/// Returns what was recorded and the subject's external id (for the audit pseudonym).
pub fn confirm(
    tx: &Connection,
    policies: &PolicySet,
    confirmation: &Confirmation,
    at: i64,
) -> Result<(Recorded, String), NodeError> {
    let hash = Sha256::digest(confirmation.token.as_bytes());
    let row = tx
        .query_row(
            "SELECT subject_id, purpose, channel, request_seq, expires_at, used_at
             FROM consent_tokens WHERE token_sha256 = $1 AND tenant = $2",
            params![hash.as_slice(), confirmation.tenant.as_str()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i32>(1)?,
                    r.get::<_, i32>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((subject, purpose, channel, request_seq, expires_at, used_at)) = row else {
        return Err(NodeError::NotFound("unknown confirmation token".into()));
    };
    if used_at.is_some() {
        return Err(NodeError::FailedPrecondition(
            "token: this confirmation token was already used".into(),
        ));
    }
    if at >= expires_at {
        return Err(NodeError::FailedPrecondition(format!(
            "token: this confirmation token expired {} s ago; record the grant again",
            at - expires_at
        )));
    }
    let purpose = Purpose::try_from(purpose).unwrap_or(Purpose::Unspecified);
    let channel = Channel::try_from(channel).unwrap_or(Channel::Unspecified);
    let latest: i64 = tx.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM consent_state
         WHERE tenant = $1 AND subject_id = $2 AND purpose = $3 AND channel IN ($4, 0)",
        params![
            confirmation.tenant.as_str(),
            subject,
            purpose as i32,
            channel as i32
        ],
        |r| r.get(0),
    )?;
    if latest != request_seq {
        return Err(NodeError::FailedPrecondition(
            "token: a later consent entry supersedes this request".into(),
        ));
    }
    // The confirmation is recorded under the policy now in force for the request's country.
    let requested_under: String = tx.query_row(
        "SELECT policy_version FROM consent_ledger WHERE tenant = $1 AND subject_id = $2 AND seq = $3",
        params![confirmation.tenant.as_str(), subject, request_seq],
        |r| r.get(0),
    )?;
    let country = CountryPolicy::country_of_label(&requested_under);
    let policy_version = policies
        .get(country)
        .map_or(requested_under.clone(), CountryPolicy::label);
    tx.execute(
        "UPDATE consent_tokens SET used_at = $1 WHERE token_sha256 = $2",
        params![at, hash.as_slice()],
    )?;
    let entry = append(
        tx,
        confirmation.tenant.as_str(),
        &subject,
        purpose,
        channel,
        ConsentAction::DoubleOptInConfirm,
        confirmation.source,
        None,
        &policy_version,
        "double-opt-in",
        at,
    )?;
    Ok((
        Recorded {
            entry,
            state: ConsentState::GrantedConfirmed,
            token: None,
        },
        subject,
    ))
}

/// State and history of a subject, without direct identifiers.
pub fn get(conn: &Connection, q: &ConsentQuestion) -> Result<GetConsentResponse, NodeError> {
    let purpose = q.purpose as i32;
    let mut history = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT seq, action, purpose, channel, recorded_at, source, wording_sha256,
                policy_version, actor, state
         FROM consent_ledger WHERE tenant = $1 AND subject_id = $2 AND ($3 = 0 OR purpose = $3)
         ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![q.tenant.as_str(), q.subject.external_id, purpose])?;
    while let Some(r) = rows.next()? {
        history.push(ConsentEntry {
            seq: r.get::<_, i64>(0)? as u64,
            action: r.get(1)?,
            purpose: r.get(2)?,
            channel: r.get(3)?,
            recorded_at: Some(ts(r.get(4)?)),
            source: r.get(5)?,
            wording_sha256: r.get::<_, Option<Vec<u8>>>(6)?.unwrap_or_default(),
            policy_version: r.get(7)?,
            actor: r.get(8)?,
            resulting_state: r.get(9)?,
        });
    }
    let mut current = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT purpose, channel, state, since, policy_version FROM consent_state
         WHERE tenant = $1 AND subject_id = $2 AND ($3 = 0 OR purpose = $3)
         ORDER BY purpose, channel",
    )?;
    let mut rows = stmt.query(params![q.tenant.as_str(), q.subject.external_id, purpose])?;
    while let Some(r) = rows.next()? {
        current.push(ConsentStatus {
            purpose: r.get(0)?,
            channel: r.get(1)?,
            state: r.get(2)?,
            since: Some(ts(r.get(3)?)),
            policy_version: r.get(4)?,
        });
    }
    Ok(GetConsentResponse { current, history })
}

fn rule_name(rule: ConsentRule) -> &'static str {
    match rule {
        ConsentRule::None => "needs no consent",
        ConsentRule::OptOut => "is allowed unless the subject opted out",
        ConsentRule::OptIn => "needs an opt-in",
        ConsentRule::DoubleOptIn => "needs a confirmed double opt-in",
    }
}

/// Keeps, for an erased subject's refusals, withdrawals and objections on file, a suppression
/// entry under each of `identifiers` (suppression ids: the external id's and the contact
/// identifiers'), with the day the state began, in the erasure's transaction and before the
/// consent state goes. Returns the entries written, for the vault to keep
/// ([`crate::store::vault::Vault::destroy`]).
pub fn suppress(
    tx: &Connection,
    tenant: &str,
    subject: &str,
    identifiers: &[String],
) -> Result<Vec<KeptSuppression>, NodeError> {
    use ConsentState as S;
    if identifiers.is_empty() {
        return Ok(Vec::new());
    }
    let denials: Vec<(i32, i32, i32, i64)> = tx
        .prepare(&format!(
            "SELECT purpose, channel, state, since FROM consent_state
             WHERE tenant = $1 AND subject_id = $2 AND state IN ({}, {}, {})",
            S::Refused as i32,
            S::Withdrawn as i32,
            S::Objected as i32
        ))?
        .query_map(params![tenant, subject], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let kept: Vec<KeptSuppression> = identifiers
        .iter()
        .flat_map(|id| {
            denials
                .iter()
                .map(move |&(purpose, channel, state, since)| KeptSuppression {
                    identifier: id.clone(),
                    purpose,
                    channel,
                    state,
                    since_day: since.div_euclid(86_400),
                })
        })
        .collect();
    restore_suppressions(tx, tenant, &kept)?;
    Ok(kept)
}

/// Writes `suppressions` (kept by erasures) for `tenant`, replacing any under the same
/// identifier, purpose and channel: by an erasure, and by a restore of a copy from before it.
pub fn restore_suppressions(
    tx: &Connection,
    tenant: &str,
    suppressions: &[KeptSuppression],
) -> Result<usize, NodeError> {
    let mut made = 0;
    for s in suppressions {
        made += tx.execute(
            "INSERT INTO suppressions (tenant, identifier, purpose, channel, state, since_day)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant, identifier, purpose, channel) DO UPDATE
             SET state = excluded.state, since_day = excluded.since_day",
            params![
                tenant,
                s.identifier,
                s.purpose,
                s.channel,
                s.state,
                s.since_day
            ],
        )?;
    }
    Ok(made)
}

/// Whether `tenant` has any suppression: when not (the common case), ingest skips looking
/// up its profiles' contact identifiers.
pub fn any_suppression(tx: &Connection, tenant: &str) -> Result<bool, NodeError> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM suppressions WHERE tenant = $1 LIMIT 1",
            params![tenant],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Copies the suppressions kept under any of `identifiers` (a profile's contact identifiers)
/// to `to` (its external id's suppression id), where `to` has none for that purpose and
/// channel.
pub fn extend_suppression(
    tx: &Connection,
    tenant: &str,
    identifiers: &[String],
    to: &str,
) -> Result<usize, NodeError> {
    let mut made = 0;
    for id in identifiers {
        made += tx.execute(
            "INSERT INTO suppressions (tenant, identifier, purpose, channel, state, since_day)
             SELECT tenant, $3, purpose, channel, state, since_day FROM suppressions
             WHERE tenant = $1 AND identifier = $2
             ON CONFLICT (tenant, identifier, purpose, channel) DO NOTHING",
            params![tenant, id, to],
        )?;
    }
    Ok(made)
}

/// The suppression in force for `purpose` on `channel` under any of `identifiers` (its
/// state and day), if one is.
pub fn suppression(
    conn: &Connection,
    tenant: &str,
    identifiers: &[String],
    purpose: Purpose,
    channel: Channel,
) -> Result<Option<(ConsentState, i64)>, NodeError> {
    let mut stmt = conn.prepare_cached(
        "SELECT state, since_day FROM suppressions
         WHERE tenant = $1 AND identifier = $2 AND purpose = $3 AND channel IN ($4, 0)
         LIMIT 1",
    )?;
    for id in identifiers {
        let found = stmt
            .query_row(params![tenant, id, purpose as i32, channel as i32], |r| {
                Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?;
        if let Some((state, day)) = found {
            return Ok(Some((
                ConsentState::try_from(state).unwrap_or(ConsentState::Refused),
                day,
            )));
        }
    }
    Ok(None)
}

/// Answers `CheckContactPermission` for a subject of `policy`'s country. `suppressed_as`
/// gives the subject's suppression ids ([`suppress`]), asked for only when no consent is on
/// file.
pub fn check(
    conn: &Connection,
    policy: &CountryPolicy,
    q: &ConsentQuestion,
    suppressed_as: impl FnOnce() -> Vec<String>,
) -> Result<CheckContactPermissionResponse, NodeError> {
    let rule = rule_of(policy, q.purpose, q.channel);
    let (state, since) = current(
        conn,
        q.tenant.as_str(),
        &q.subject.external_id,
        q.purpose,
        q.channel,
    )?;
    let restricted = is_restricted(conn, q.tenant.as_str(), &q.subject.external_id)?;
    // Nothing on file since an erasure that kept a suppression: the suppression decides. A
    // consent given after it (a new entry on file) does.
    let suppressed = match state {
        ConsentState::None => suppression(
            conn,
            q.tenant.as_str(),
            &suppressed_as(),
            q.purpose,
            q.channel,
        )?,
        _ => None,
    };
    let allowed = allows(rule, state) && !restricted && suppressed.is_none();
    let channel_name = q
        .channel
        .as_str_name()
        .trim_start_matches("CHANNEL_")
        .to_lowercase();
    let purpose_name = q
        .purpose
        .as_str_name()
        .trim_start_matches("PURPOSE_")
        .to_lowercase();
    let mut reasons = vec![PermissionReason {
        code: PermissionReasonCode::CountryRule as i32,
        rule: wire_rule(rule) as i32,
        consent_state: ConsentState::Unspecified as i32,
        consent_since: None,
        detail: format!(
            "{}: {purpose_name} by {channel_name} {}",
            policy.country(),
            rule_name(rule)
        ),
    }];
    let (code, detail) = match state {
        _ if suppressed.is_some() => (
            PermissionReasonCode::SuppressedAfterErasure,
            "denied: suppressed after erasure (the subject had refused or objected)",
        ),
        _ if restricted => (
            PermissionReasonCode::RestrictionInForce,
            "the subject's processing is restricted",
        ),
        ConsentState::Objected => (
            PermissionReasonCode::ObjectionInForce,
            "the subject objected to this processing",
        ),
        ConsentState::Refused | ConsentState::Withdrawn => (
            PermissionReasonCode::RefusedOrWithdrawn,
            "the subject refused or withdrew consent",
        ),
        ConsentState::PendingConfirmation => (
            PermissionReasonCode::ConfirmationPending,
            "a double opt-in awaits confirmation",
        ),
        ConsentState::None if matches!(rule, ConsentRule::OptIn | ConsentRule::DoubleOptIn) => {
            (PermissionReasonCode::NoConsentOnFile, "no consent on file")
        }
        ConsentState::Granted if rule == ConsentRule::DoubleOptIn => (
            PermissionReasonCode::ConsentState,
            "granted without the double opt-in confirmation the rule needs",
        ),
        _ => (PermissionReasonCode::ConsentState, "consent state on file"),
    };
    let (state, since) = match suppressed {
        Some((state, day)) => (state, Some(day * 86_400)),
        None => (state, since),
    };
    reasons.push(PermissionReason {
        code: code as i32,
        rule: WireRule::Unspecified as i32,
        consent_state: state as i32,
        consent_since: since.map(ts),
        detail: detail.to_owned(),
    });
    Ok(CheckContactPermissionResponse {
        allowed,
        reasons,
        policy_version: policy.label(),
    })
}

/// The consent condition of one purpose over the node's countries: which rows of `interactions`
/// a purpose may use. Only every-channel (channel 0) entries count here: processing is not a
/// contact on a channel. Restricted subjects, and subjects held for an unfinished erasure, take
/// part in nothing.
#[derive(Debug, Clone)]
pub struct Gate {
    tenant: String,
    purpose: i32,
    /// Per country: whether listed subjects are the only ones kept (opt-in rules) rather than
    /// the ones dropped, and the consent states listed (as SQL integers).
    arms: Vec<(String, bool, String)>,
}

impl Gate {
    /// The gate of `purpose` for `tenant` under `policies`.
    pub fn new(policies: &PolicySet, purpose: Purpose, tenant: &str) -> Self {
        use ConsentState as S;
        let arms = policies
            .iter()
            .map(|policy| {
                let (keep, states): (bool, &[S]) =
                    match rule_of(policy, purpose, Channel::Unspecified) {
                        ConsentRule::None => (false, &[S::Objected]),
                        ConsentRule::OptOut => (false, &[S::Refused, S::Withdrawn, S::Objected]),
                        ConsentRule::OptIn => (true, &[S::Granted, S::GrantedConfirmed]),
                        ConsentRule::DoubleOptIn => (true, &[S::GrantedConfirmed]),
                    };
                let list = states
                    .iter()
                    .map(|s| (*s as i32).to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                (policy.country().to_owned(), keep, list)
            })
            .collect();
        Self {
            tenant: tenant.to_owned(),
            purpose: purpose as i32,
            arms,
        }
    }

    /// Appends the condition to `q` as a SQL expression. `col` prefixes the `country` and
    /// `subject_id` columns (e.g. `"i."`).
    pub fn condition(&self, q: &mut Query<'_>, col: &str) {
        q.push("((");
        for (i, (country, keep, list)) in self.arms.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            // Country codes are validated upper-case letters; enum values are integers.
            q.push(&format!(
                "({col}country = '{country}' AND {col}subject_id {} (SELECT subject_id FROM \
                 consent_state WHERE tenant = ",
                if *keep { "IN" } else { "NOT IN" },
            ))
            .bind(self.tenant.clone())
            .push(&format!(
                " AND purpose = {} AND channel = 0 AND state IN ({list})))",
                self.purpose
            ));
        }
        q.push(")");
        unrestricted(q, &self.tenant, col);
        q.push(")");
    }

    /// Appends the condition to `q` as a clause of a `WHERE` (` AND …`).
    pub fn filter(&self, q: &mut Query<'_>, col: &str) {
        q.push(" AND ");
        self.condition(q, col);
    }

    /// Whether every country's rule drops listed subjects (opt-out or no consent needed), so
    /// that [`Gate::dropped_subjects`] is a small set. When a country keeps listed subjects only
    /// (opt-in), most rows may be dropped, and the rows have to be read.
    pub fn drops_listed_only(&self) -> bool {
        !self.arms.iter().any(|(_, keep, _)| *keep)
    }

    /// Appends to `q` a query selecting every subject some of whose rows the gate may drop
    /// (meaningful when [`Gate::drops_listed_only`]).
    pub fn dropped_subjects(&self, q: &mut Query<'_>) {
        for (_, _, list) in &self.arms {
            q.push("SELECT subject_id FROM consent_state WHERE tenant = ")
                .bind(self.tenant.clone())
                .push(&format!(
                    " AND purpose = {} AND channel = 0 AND state IN ({list}) UNION ",
                    self.purpose
                ));
        }
        q.push("SELECT subject_id FROM subject_flags WHERE tenant = ")
            .bind(self.tenant.clone())
            .push(" AND (restricted = 1 OR erasure_pending = 1)");
    }
}

/// Appends to `q` the condition that keeps rows of subjects free to process: neither
/// restricted nor held for an erasure (flags that [`crate::domain::rights`] sets in
/// `subject_flags`). `col` prefixes `subject_id`.
pub fn unrestricted(q: &mut Query<'_>, tenant: &str, col: &str) {
    q.push(&format!(
        " AND {col}subject_id NOT IN (SELECT subject_id FROM subject_flags WHERE tenant = "
    ))
    .bind(tenant.to_owned())
    .push(" AND (restricted = 1 OR erasure_pending = 1))");
}

/// True when the subject's processing is restricted or held for an erasure.
pub fn is_restricted(conn: &Connection, tenant: &str, subject: &str) -> Result<bool, NodeError> {
    Ok(conn
        .query_row(
            "SELECT restricted = 1 OR erasure_pending = 1 FROM subject_flags
             WHERE tenant = $1 AND subject_id = $2",
            params![tenant, subject],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::SHIPPED;
    use ConsentRule as R;
    use ConsentState as S;

    /// The decision table, written out by hand: rule × state → allowed.
    const TABLE: &[(R, S, bool)] = &[
        (R::None, S::None, true),
        (R::None, S::Granted, true),
        (R::None, S::GrantedConfirmed, true),
        (R::None, S::PendingConfirmation, true),
        (R::None, S::Refused, true),
        (R::None, S::Withdrawn, true),
        (R::None, S::Objected, false),
        (R::OptOut, S::None, true),
        (R::OptOut, S::Granted, true),
        (R::OptOut, S::GrantedConfirmed, true),
        (R::OptOut, S::PendingConfirmation, true),
        (R::OptOut, S::Refused, false),
        (R::OptOut, S::Withdrawn, false),
        (R::OptOut, S::Objected, false),
        (R::OptIn, S::None, false),
        (R::OptIn, S::Granted, true),
        (R::OptIn, S::GrantedConfirmed, true),
        (R::OptIn, S::PendingConfirmation, false),
        (R::OptIn, S::Refused, false),
        (R::OptIn, S::Withdrawn, false),
        (R::OptIn, S::Objected, false),
        (R::DoubleOptIn, S::None, false),
        (R::DoubleOptIn, S::Granted, false),
        (R::DoubleOptIn, S::GrantedConfirmed, true),
        (R::DoubleOptIn, S::PendingConfirmation, false),
        (R::DoubleOptIn, S::Refused, false),
        (R::DoubleOptIn, S::Withdrawn, false),
        (R::DoubleOptIn, S::Objected, false),
    ];

    fn expected(rule: R, state: S) -> bool {
        TABLE
            .iter()
            .find(|(r, s, _)| *r == rule && *s == state)
            .map(|(_, _, a)| *a)
            .expect("every rule × state is in the table")
    }

    /// The rule for a purpose and channel read straight from the TOML text, independently of
    /// the policy parser: the channel's key, else the purpose's `default`.
    fn rule_in_file(text: &str, purpose: &str, channel: &str) -> R {
        let doc: toml::Table = toml::from_str(text).unwrap();
        let rules = doc["consent"][purpose].as_table().unwrap();
        let name = rules
            .get(channel)
            .or_else(|| rules.get("default"))
            .and_then(|v| v.as_str())
            .unwrap();
        match name {
            "none" => R::None,
            "opt_out" => R::OptOut,
            "opt_in" => R::OptIn,
            "double_opt_in" => R::DoubleOptIn,
            other => panic!("unknown rule {other}"),
        }
    }

    const PURPOSES: [(Purpose, &str); 6] = [
        (Purpose::Service, "service"),
        (Purpose::CxSurvey, "cx_survey"),
        (Purpose::CxAnalytics, "cx_analytics"),
        (Purpose::Marketing, "marketing"),
        (Purpose::Profiling, "profiling"),
        (Purpose::CallRecording, "call_recording"),
    ];
    const CHANNELS: [(Channel, &str); 8] = [
        (Channel::Phone, "phone"),
        (Channel::Email, "email"),
        (Channel::Chat, "chat"),
        (Channel::Sms, "sms"),
        (Channel::Web, "web"),
        (Channel::App, "app"),
        (Channel::Post, "post"),
        (Channel::InPerson, "in_person"),
    ];
    const STATES: [S; 7] = [
        S::None,
        S::Granted,
        S::GrantedConfirmed,
        S::PendingConfirmation,
        S::Refused,
        S::Withdrawn,
        S::Objected,
    ];

    #[test]
    fn decision_matrix_over_every_shipped_country_purpose_channel_and_state() {
        let countries: Vec<String> = SHIPPED.iter().map(|(c, _)| (*c).to_owned()).collect();
        let policies = PolicySet::load(None, &countries).unwrap();
        let mut checked = 0;
        for (country, text) in SHIPPED {
            let policy = policies.get(country).unwrap();
            for (purpose, purpose_key) in PURPOSES {
                for (channel, channel_key) in CHANNELS {
                    let rule = rule_in_file(text, purpose_key, channel_key);
                    assert_eq!(
                        rule_of(policy, purpose, channel),
                        rule,
                        "{country} {purpose_key} {channel_key}"
                    );
                    for state in STATES {
                        assert_eq!(
                            allows(rule_of(policy, purpose, channel), state),
                            expected(rule, state),
                            "{country} {purpose_key} {channel_key} {state:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 12 * 6 * 8 * 7);
    }

    #[test]
    fn base64url_tokens_are_url_safe() {
        assert_eq!(base64url(b"\xfb\xff\xbf"), "-_-_");
        assert_eq!(base64url(b"ab"), "YWI");
    }
}
