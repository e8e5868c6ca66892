//! Deterministic interactions for the benchmarks, streamed in time order (as a contact centre
//! produces them), never held all at once: ten million rows would not fit comfortably.

use domicile::synth;
use domicile_proto::{
    pb::{
        Channel, Direction, InteractionRecord, RecordPayload, SurveyAnswer, record_payload::Record,
    },
    seal::{EnvelopeSealer, PublicSealingKey},
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The tenant every benchmark writes as.
pub const TENANT: &str = "bench";
/// Start of the twelve months of data: 2025-11-01T00:00:00Z.
pub const PERIOD_START: i64 = 1_761_955_200;
/// End (exclusive): 2026-11-01T00:00:00Z.
pub const PERIOD_END: i64 = 1_793_491_200;

/// One generated interaction, with what the centralised baselines store of it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Interaction id (unique across regions).
    pub id: String,
    /// Subject external id.
    pub subject: String,
    /// Country.
    pub country: String,
    /// Channel.
    pub channel: Channel,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// Handle time, seconds.
    pub handle_time: u32,
    /// NPS, CSAT and CES answers.
    pub nps: Option<u32>,
    /// CSAT.
    pub csat: Option<u32>,
    /// CES.
    pub ces: Option<u32>,
    /// A free-text comment, or empty.
    pub comment: String,
}

/// A stream of `total` interactions of one region's `countries` over the twelve months, from
/// `subjects` subjects (round-robin over the countries), in time order.
pub struct Generator {
    rng: ChaCha8Rng,
    countries: Vec<String>,
    subjects: usize,
    total: usize,
    next: usize,
    /// Part of `id`, so that a second pass over the same months makes new ids.
    pass: u32,
    comments: bool,
}

impl Generator {
    /// A generator; the same arguments give the same rows.
    pub fn new(countries: &[String], subjects: usize, total: usize, pass: u32, seed: u64) -> Self {
        let seed = countries
            .iter()
            .flat_map(|c| c.bytes())
            .fold(seed ^ u64::from(pass) << 32, |h, b| {
                h.wrapping_mul(31).wrapping_add(u64::from(b))
            });
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            countries: countries.to_vec(),
            subjects,
            total,
            next: 0,
            pass,
            comments: false,
        }
    }

    /// Gives one survey answer in ten a short comment (sealed with the subject's data key).
    pub fn with_comments(mut self) -> Self {
        self.comments = true;
        self
    }
}

impl Iterator for Generator {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        if self.next >= self.total {
            return None;
        }
        let j = self.next;
        self.next += 1;
        let rng = &mut self.rng;
        let span = PERIOD_END - PERIOD_START;
        let slot = span as f64 / self.total as f64;
        let started_at =
            PERIOD_START + (j as f64 * slot) as i64 + rng.random_range(0..slot.max(1.0) as i64);
        let s = rng.random_range(0..self.subjects.max(1));
        let country = self.countries[s % self.countries.len()].clone();
        // The distributions of `domicile dev`'s data set.
        let channel = synth::channel(rng);
        let handle_time = synth::handle_time(rng, channel);
        let (nps, csat, ces, comment) = if rng.random_bool(0.3) {
            let nps = synth::nps_score(rng);
            let ces = rng.random_bool(0.5).then(|| rng.random_range(1..=7));
            let comment = if self.comments && rng.random_bool(0.1) {
                "Quick and friendly, thank you.".to_owned()
            } else {
                String::new()
            };
            (
                Some(nps),
                Some(u32::div_ceil(nps, 2).clamp(1, 5)),
                ces,
                comment,
            )
        } else {
            (None, None, None, String::new())
        };
        Some(Row {
            id: format!("ix-{}-{}-{j:08}", country.to_ascii_lowercase(), self.pass),
            subject: synth::subject_id(&country, s),
            country,
            channel,
            started_at,
            handle_time,
            nps,
            csat,
            ces,
            comment,
        })
    }
}

impl Row {
    /// The payload a client seals for this row.
    pub fn payload(&self) -> RecordPayload {
        RecordPayload {
            record: Some(Record::Interaction(InteractionRecord {
                interaction_id: self.id.clone(),
                subject_external_id: self.subject.clone(),
                channel: self.channel as i32,
                direction: Direction::Inbound as i32,
                started_at: Some(prost_types::Timestamp {
                    seconds: self.started_at,
                    nanos: 0,
                }),
                ended_at: Some(prost_types::Timestamp {
                    seconds: self.started_at + i64::from(self.handle_time),
                    nanos: 0,
                }),
                handle_time_seconds: self.handle_time,
                outcome: "resolved".into(),
                agent_team: "team-1".into(),
                recorded: false,
                survey: self.nps.map(|nps| SurveyAnswer {
                    survey_id: "post-contact".into(),
                    nps: Some(nps),
                    csat: self.csat,
                    ces: self.ces,
                    comment: self.comment.clone(),
                }),
            })),
        }
    }
}

/// Seals `rows` into one envelope for `region` under its public `key`, as a client does.
pub fn seal(
    region: &str,
    key: &PublicSealingKey,
    rows: &[Row],
) -> anyhow::Result<domicile_proto::pb::SealedEnvelope> {
    let mut sealer = EnvelopeSealer::new(TENANT, region, key)?;
    for r in rows {
        sealer.seal(&r.country, &format!("interaction/{}", r.id), &r.payload())?;
    }
    Ok(sealer.finish())
}
