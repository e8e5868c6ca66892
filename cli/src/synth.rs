//! A deterministic synthetic CX data set: subjects with names, e-mails and phones, and
//! interactions over twelve months with realistic channels, handle times, survey scores and
//! comments. The same seed gives the same data, byte for byte.

use domicile_proto::pb::{
    Channel, Direction, InteractionRecord, RecordPayload, SubjectRecord, SurveyAnswer,
    record_payload::Record,
};
use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;

/// End of the generated period (exclusive): 2026-11-01T00:00:00Z.
pub const PERIOD_END: i64 = 1_793_491_200;
/// Start of the generated period: 365 days before [`PERIOD_END`].
pub const PERIOD_START: i64 = PERIOD_END - 365 * 86_400;

/// One generated record with its routing metadata (a [`domicile_client::Record`]).
pub type SynthRecord = domicile_client::Record;

/// What to generate for one region.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Countries of the region; subjects are spread over them round-robin.
    pub countries: Vec<String>,
    /// Number of subjects.
    pub subjects: usize,
    /// Number of interactions.
    pub interactions: usize,
    /// Seed; combined with the countries so regions differ.
    pub seed: u64,
}

struct Names {
    first: &'static [&'static str],
    last: &'static [&'static str],
    language: &'static str,
    dial: &'static str,
    tld: &'static str,
    comments: &'static [&'static str],
}

fn names(country: &str) -> Names {
    match country {
        "DE" | "AT" => Names {
            first: &[
                "Lena", "Jonas", "Mia", "Felix", "Hannah", "Lukas", "Emma", "Paul",
            ],
            last: &[
                "Müller",
                "Schmidt",
                "Schneider",
                "Fischer",
                "Weber",
                "Wagner",
                "Becker",
            ],
            language: "de-DE",
            dial: "+49",
            tld: "de",
            comments: &[
                "Sehr freundlicher Service, danke!",
                "Die Wartezeit war viel zu lang.",
                "Problem wurde sofort gelöst.",
                "Ich musste dreimal anrufen.",
                "Alles bestens.",
            ],
        },
        "FR" => Names {
            first: &[
                "Léa", "Hugo", "Chloé", "Louis", "Manon", "Gabriel", "Inès", "Jules",
            ],
            last: &[
                "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit",
            ],
            language: "fr-FR",
            dial: "+33",
            tld: "fr",
            comments: &[
                "Conseiller très aimable.",
                "Attente beaucoup trop longue.",
                "Mon problème a été résolu rapidement.",
                "Personne ne m'a rappelé.",
                "Rien à redire.",
            ],
        },
        _ => Names {
            first: &[
                "Olivia", "Liam", "Emma", "Noah", "Ava", "Elijah", "Sophia", "James",
            ],
            last: &[
                "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller",
            ],
            language: "en-US",
            dial: "+1",
            tld: "com",
            comments: &[
                "Great support, thanks!",
                "Waited way too long on hold.",
                "Fixed on the first call.",
                "Had to explain my issue three times.",
                "All good.",
            ],
        },
    }
}

const CHANNELS: &[(Channel, u32)] = &[
    (Channel::Phone, 35),
    (Channel::Email, 20),
    (Channel::Chat, 20),
    (Channel::Web, 10),
    (Channel::App, 8),
    (Channel::Sms, 4),
    (Channel::InPerson, 2),
    (Channel::Post, 1),
];
const OUTCOMES: &[&str] = &[
    "resolved",
    "resolved",
    "resolved",
    "escalated",
    "callback",
    "abandoned",
];
const TEAMS: &[&str] = &["billing", "tech-support", "sales", "retention"];

/// An NPS answer, skewed towards satisfied customers as real CX data is.
pub fn nps_score(rng: &mut ChaCha8Rng) -> u32 {
    [10, 10, 9, 9, 9, 8, 8, 7, 7, 6, 5, 3, 1, 0][rng.random_range(0..14)]
}

/// A channel drawn with realistic weights (phone most, post least).
pub fn channel(rng: &mut ChaCha8Rng) -> Channel {
    let total: u32 = CHANNELS.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (c, w) in CHANNELS {
        if x < *w {
            return *c;
        }
        x -= w;
    }
    Channel::Phone
}

/// A handle time in seconds typical of channel `c` (0 for self-service channels).
pub fn handle_time(rng: &mut ChaCha8Rng, c: Channel) -> u32 {
    match c {
        Channel::Phone => rng.random_range(60..1_800),
        Channel::Chat => rng.random_range(120..2_400),
        Channel::Email | Channel::Post => rng.random_range(180..1_200),
        Channel::InPerson => rng.random_range(300..2_700),
        Channel::Sms => rng.random_range(30..300),
        Channel::Web | Channel::App | Channel::Unspecified => 0,
    }
}

fn seed_for(spec: &SynthSpec) -> u64 {
    spec.countries
        .iter()
        .flat_map(|c| c.bytes())
        .fold(spec.seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

/// The subject external id for subject `i` in `country`.
pub fn subject_id(country: &str, i: usize) -> String {
    format!("cust-{}-{i:07}", country.to_ascii_lowercase())
}

/// Generates a region's data set: subjects first, then interactions.
pub fn generate(spec: &SynthSpec) -> Vec<SynthRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(spec));
    let mut out = Vec::with_capacity(spec.subjects + spec.interactions);
    let country_of = |i: usize| spec.countries[i % spec.countries.len()].clone();
    // Calls are recorded only where one party's consent suffices: elsewhere the node would
    // (rightly) refuse a recorded call without the subject's recording consent on file.
    let records_calls = |country: &str| {
        domicile_node::domain::policy::PolicySet::load(None, &[country.to_owned()])
            .ok()
            .and_then(|set| set.get(country).map(|p| p.recording.rule))
            .is_some_and(|rule| rule == domicile_node::domain::policy::RecordingRule::OneParty)
    };
    let recording: std::collections::HashMap<String, bool> = spec
        .countries
        .iter()
        .map(|c| (c.clone(), records_calls(c)))
        .collect();
    // (first name, phone) of each subject: some comments quote them, as real ones do.
    let mut contacts: Vec<(&str, String)> = Vec::with_capacity(spec.subjects);
    for i in 0..spec.subjects {
        let country = country_of(i);
        let n = names(&country);
        let first = *n.first.choose(&mut rng).expect("non-empty");
        let last = *n.last.choose(&mut rng).expect("non-empty");
        let id = subject_id(&country, i);
        let phone = format!(
            "{} {}",
            n.dial,
            rng.random_range(100_000_000u64..999_999_999)
        );
        contacts.push((first, phone.clone()));
        out.push(SynthRecord {
            idempotency_key: format!("subject/{id}"),
            payload: RecordPayload {
                record: Some(Record::Subject(SubjectRecord {
                    external_id: id,
                    full_name: format!("{first} {last}"),
                    email: format!(
                        "{}.{}{}@example.{}",
                        first.to_lowercase(),
                        last.to_lowercase(),
                        i,
                        n.tld
                    ),
                    phone,
                    postal_code: format!("{:05}", rng.random_range(1_000..99_999)),
                    language: n.language.to_owned(),
                    birth_year: rng.random_range(1940..2008),
                })),
            },
            country,
        });
    }
    for j in 0..spec.interactions {
        let s = rng.random_range(0..spec.subjects.max(1));
        let country = country_of(s);
        let n = names(&country);
        let ch = channel(&mut rng);
        let started = rng.random_range(PERIOD_START..PERIOD_END);
        let ht = handle_time(&mut rng, ch);
        let survey = rng.random_bool(0.3).then(|| {
            // Skewed towards satisfied customers, as real CX data is.
            let nps = nps_score(&mut rng);
            SurveyAnswer {
                survey_id: if ch == Channel::Phone {
                    "post-call"
                } else {
                    "post-contact"
                }
                .to_owned(),
                nps: Some(nps),
                csat: Some(u32::div_ceil(nps, 2).clamp(1, 5)),
                ces: rng.random_bool(0.5).then(|| rng.random_range(1..=7)),
                comment: if rng.random_bool(0.5) {
                    let text = *n.comments.choose(&mut rng).expect("non-empty");
                    match contacts.get(s).filter(|_| rng.random_bool(0.15)) {
                        Some((first, phone)) => format!("{text} {first}, {phone}"),
                        None => text.to_owned(),
                    }
                } else {
                    String::new()
                },
            }
        });
        let id = format!("ix-{}-{j:08}", country.to_ascii_lowercase());
        out.push(SynthRecord {
            idempotency_key: format!("interaction/{id}"),
            payload: RecordPayload {
                record: Some(Record::Interaction(InteractionRecord {
                    interaction_id: id,
                    subject_external_id: subject_id(&country, s),
                    channel: ch as i32,
                    direction: if rng.random_bool(0.8) {
                        Direction::Inbound
                    } else {
                        Direction::Outbound
                    } as i32,
                    started_at: Some(prost_types::Timestamp {
                        seconds: started,
                        nanos: 0,
                    }),
                    ended_at: Some(prost_types::Timestamp {
                        seconds: started + i64::from(ht),
                        nanos: 0,
                    }),
                    handle_time_seconds: ht,
                    outcome: (*OUTCOMES.choose(&mut rng).expect("non-empty")).to_owned(),
                    agent_team: (*TEAMS.choose(&mut rng).expect("non-empty")).to_owned(),
                    recorded: ch == Channel::Phone
                        && rng.random_bool(0.6)
                        && recording.get(&country).copied().unwrap_or(false),
                    survey,
                })),
            },
            country,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data() {
        let spec = SynthSpec {
            countries: vec!["DE".into()],
            subjects: 20,
            interactions: 50,
            seed: 7,
        };
        let a: Vec<_> = generate(&spec)
            .into_iter()
            .map(|r| prost::Message::encode_to_vec(&r.payload))
            .collect();
        let b: Vec<_> = generate(&spec)
            .into_iter()
            .map(|r| prost::Message::encode_to_vec(&r.payload))
            .collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 70);
    }
}
