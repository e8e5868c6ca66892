//! Bad input gets a clear error naming the field at fault, and changes nothing else.

use domicile_proto::{
    error::field_violations,
    pb::{
        AggregateQuery, AggregateRequest, IngestRequest, Metric, Purpose, QueryRecordsRequest,
        RecordKind, RecordQuery, RecordStatus, RegionalNodeIngestRequest, RejectReason,
        SealedEnvelope,
    },
    seal::{EnvelopeSealer, PublicSealingKey},
};
use domicile_tests::{
    Federation, SynthRecord, TENANT, client, federation, gateway_client, node_client, synth,
};

async fn key_of(fed: &Federation, region: &str) -> anyhow::Result<PublicSealingKey> {
    let mut gw = gateway_client(fed).await?;
    let regions = client::regions(&mut gw).await?;
    let r = regions.iter().find(|r| r.region_id == region).unwrap();
    Ok(PublicSealingKey::from_bytes(
        &r.sealing_key.as_ref().unwrap().public_key,
    )?)
}

fn some_records(country: &str, n: usize) -> Vec<SynthRecord> {
    synth::generate(&synth::SynthSpec {
        countries: vec![country.into()],
        subjects: n,
        interactions: 0,
        seed: 9,
    })
}

fn seal(
    tenant: &str,
    region: &str,
    key: &PublicSealingKey,
    records: &[SynthRecord],
) -> SealedEnvelope {
    let mut s = EnvelopeSealer::new(tenant, region, key).unwrap();
    for r in records {
        s.seal(&r.country, &r.idempotency_key, &r.payload).unwrap();
    }
    s.finish()
}

fn subjects_in(fed: &Federation, region: &str) -> i64 {
    let conn = fed.node(region).unwrap().connect().unwrap();
    conn.query_row("SELECT COUNT(*) FROM subjects", [], |r| r.get(0))
        .unwrap()
}

fn statuses(results: &[domicile_proto::pb::RecordResult]) -> Vec<(i32, i32)> {
    results.iter().map(|r| (r.status, r.reason)).collect()
}

async fn ingest_one(
    gw: &mut domicile_client::Gateway,
    envelope: SealedEnvelope,
) -> Result<Vec<domicile_proto::pb::RecordResult>, tonic::Status> {
    let request = IngestRequest {
        tenant_id: TENANT.into(),
        envelopes: vec![envelope],
    };
    Ok(gw.ingest(request).await?.into_inner().results)
}

fn rejected(reason: RejectReason) -> (i32, i32) {
    (RecordStatus::Rejected as i32, reason as i32)
}

const OK: (i32, i32) = (
    RecordStatus::Accepted as i32,
    RejectReason::Unspecified as i32,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_seal_is_rejected_per_record_and_the_rest_is_stored() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("us", &["US"])]).await?;
    let key = key_of(&fed, "eu-de").await?;
    let mut envelope = seal(TENANT, "eu-de", &key, &some_records("DE", 3));
    let mut damaged = envelope.records[1].ciphertext.to_vec();
    damaged[5] ^= 0x40;
    envelope.records[1].ciphertext = damaged.into();
    let mut gw = gateway_client(&fed).await?;
    let results = ingest_one(&mut gw, envelope.clone()).await?;
    assert_eq!(
        statuses(&results),
        [OK, rejected(RejectReason::SealInvalid), OK]
    );
    assert!(
        results[1].detail.contains("records[1].ciphertext"),
        "{}",
        results[1].detail
    );
    assert_eq!(subjects_in(&fed, "eu-de"), 2);

    // Sealed to another region's key: nothing opens.
    let us_key = key_of(&fed, "us").await?;
    let wrong_key = seal(TENANT, "eu-de", &us_key, &some_records("DE", 2));
    let results = ingest_one(&mut gw, wrong_key).await?;
    assert!(
        results
            .iter()
            .all(|r| r.reason == RejectReason::UnknownKey as i32)
    );

    // Metadata changed on the way (the country, in the AAD) does not open either.
    let mut relabelled = seal(TENANT, "eu-de", &key, &some_records("DE", 1));
    relabelled.records[0].kind = RecordKind::Interaction as i32;
    let results = ingest_one(&mut gw, relabelled).await?;
    assert_eq!(results[0].reason, RejectReason::SealInvalid as i32);
    assert_eq!(subjects_in(&fed, "eu-de"), 2);
    Ok(())
}

/// The gateway forwards large ciphertexts as slices of the buffer it read them into, framing
/// the fields around them itself (`federation::forward`): every record must still reach the
/// node byte for byte, in order, with the records after a large one intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_around_large_ciphertexts_reach_the_node_intact() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let key = key_of(&fed, "eu-de").await?;
    let records = some_records("DE", 3);
    let mut sealer = EnvelopeSealer::new(TENANT, "eu-de", &key)?;
    // Sealed well, but no RecordPayload inside: the node opens them (so every byte arrived:
    // the AEAD tag covers them all) and then rejects them for what they hold.
    let opaque = |n: usize| {
        (0..n)
            .map(|i| (i * 31 % 251) as u8 | 0x80)
            .collect::<Vec<u8>>()
    };
    for (i, r) in records.iter().enumerate() {
        sealer.seal(&r.country, &r.idempotency_key, &r.payload)?;
        // Between the records: 60 KB, then 3 KB (both shared, not copied, by the gateway).
        if let Some(n) = [60_000, 3_000].get(i) {
            sealer.seal_bytes(
                "DE",
                &format!("large-{i}"),
                RecordKind::Subject,
                &opaque(*n),
            )?;
        }
    }
    let mut envelope = sealer.finish();
    let mut gw = gateway_client(&fed).await?;
    let results = ingest_one(&mut gw, envelope.clone()).await?;
    let opaque_rejected = rejected(RejectReason::PayloadInvalid);
    assert_eq!(
        statuses(&results),
        [OK, opaque_rejected, OK, opaque_rejected, OK]
    );
    assert!(
        results[1].detail.contains("records[1].ciphertext: opened"),
        "{}",
        results[1].detail
    );
    assert_eq!(subjects_in(&fed, "eu-de"), 3);

    // One bit changed in the large ciphertext: it no longer opens, and its neighbours are
    // answered as the duplicates they are.
    let mut damaged = envelope.records[1].ciphertext.to_vec();
    damaged[40_000] ^= 0x01;
    envelope.records[1].ciphertext = damaged.into();
    let results = ingest_one(&mut gw, envelope).await?;
    let duplicate = (
        RecordStatus::Duplicate as i32,
        RejectReason::Unspecified as i32,
    );
    assert_eq!(
        statuses(&results),
        [
            duplicate,
            rejected(RejectReason::SealInvalid),
            duplicate,
            opaque_rejected,
            duplicate
        ]
    );
    assert_eq!(subjects_in(&fed, "eu-de"), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_for_another_country_is_refused_by_gateway_and_node() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"]), ("eu-fr", &["FR"])]).await?;
    let key = key_of(&fed, "eu-de").await?;
    // A French subject sealed to the German region.
    let mut records = some_records("DE", 1);
    records.extend(some_records("FR", 1));
    records.extend(some_records("BR", 1));
    let envelope = seal(TENANT, "eu-de", &key, &records);

    // The gateway refuses to route it…
    let mut gw = gateway_client(&fed).await?;
    let results = ingest_one(&mut gw, envelope.clone()).await?;
    assert_eq!(
        statuses(&results),
        [
            OK,
            rejected(RejectReason::CountryOutsideJurisdiction),
            rejected(RejectReason::NoRegionForCountry),
        ]
    );
    assert!(
        results[1]
            .detail
            .contains("envelopes[0].records[1].country")
    );

    // …and the node refuses it on its own when called directly (defence in depth).
    let mut node = node_client(&fed, "eu-de").await?;
    let direct = node
        .ingest(RegionalNodeIngestRequest {
            tenant_id: TENANT.into(),
            envelope: Some(envelope),
        })
        .await?
        .into_inner();
    assert_eq!(direct.results[0].status, RecordStatus::Duplicate as i32);
    assert_eq!(
        direct.results[1].reason,
        RejectReason::CountryOutsideJurisdiction as i32
    );
    assert_eq!(
        direct.results[2].reason,
        RejectReason::CountryOutsideJurisdiction as i32
    );
    assert_eq!(subjects_in(&fed, "eu-de"), 1);
    assert_eq!(subjects_in(&fed, "eu-fr"), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_batch_is_refused_whole_with_the_field_named() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let key = key_of(&fed, "eu-de").await?;
    let records = some_records("DE", 1001);
    let mut gw = gateway_client(&fed).await?;
    let err = gw
        .ingest(IngestRequest {
            tenant_id: TENANT.into(),
            envelopes: vec![seal(TENANT, "eu-de", &key, &records)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let violations = field_violations(&err);
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "envelopes");
    assert!(violations[0].description.contains("at most 1000"));
    assert_eq!(subjects_in(&fed, "eu-de"), 0, "nothing was stored");

    // The node enforces its own limit too.
    let mut node = node_client(&fed, "eu-de").await?;
    let err = node
        .ingest(RegionalNodeIngestRequest {
            tenant_id: TENANT.into(),
            envelope: Some(seal(TENANT, "eu-de", &key, &records)),
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err)[0].field, "envelope.records");
    assert_eq!(subjects_in(&fed, "eu-de"), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_every_field_at_fault() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let mut gw = gateway_client(&fed).await?;

    let err = gw
        .ingest(IngestRequest {
            tenant_id: "Not A Tenant".into(),
            envelopes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err)[0].field, "tenant_id");

    let err = gw
        .ingest(IngestRequest {
            tenant_id: TENANT.into(),
            envelopes: vec![SealedEnvelope {
                region_id: "mars".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = field_violations(&err)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["envelopes[0].region_id", "envelopes[0].records"]);

    let err = gw
        .aggregate(AggregateRequest {
            tenant_id: TENANT.into(),
            query: Some(AggregateQuery {
                purpose: Purpose::Unspecified as i32,
                metrics: vec![Metric::Nps as i32, 42],
                ..Default::default()
            }),
            regions: vec!["eu-de".into(), "atlantis".into()],
            require_all_regions: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = field_violations(&err)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["regions[1]", "query.purpose", "query.metrics[1]"]);

    for epsilon in [0.0, -1.0, 10.5, f64::NAN, 0.0004] {
        let err = gw
            .aggregate(AggregateRequest {
                tenant_id: TENANT.into(),
                query: Some(AggregateQuery {
                    purpose: Purpose::CxAnalytics as i32,
                    metrics: vec![Metric::Count as i32],
                    epsilon: Some(epsilon),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "epsilon {epsilon}"
        );
        assert_eq!(field_violations(&err)[0].field, "query.epsilon");
    }

    let err = gw
        .query_records(QueryRecordsRequest {
            tenant_id: "Bad Tenant".into(),
            query: Some(RecordQuery {
                purpose: Purpose::Unspecified as i32,
                limit: 1_000_001,
                channels: vec![0],
                ..Default::default()
            }),
            regions: vec!["atlantis".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = field_violations(&err)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "regions[0]",
            "tenant_id",
            "query.purpose",
            "query.channels[0]",
            "query.limit"
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_payload_is_rejected_with_its_field_and_no_personal_value() -> anyhow::Result<()>
{
    use domicile_proto::pb::{
        InteractionRecord, RecordPayload, SurveyAnswer, record_payload::Record,
    };
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let key = key_of(&fed, "eu-de").await?;
    let mut sealer = EnvelopeSealer::new(TENANT, "eu-de", &key)?;
    let payload = RecordPayload {
        record: Some(Record::Interaction(InteractionRecord {
            interaction_id: "ix-1".into(),
            subject_external_id: "cust-1".into(),
            channel: 1,
            started_at: Some(prost_types::Timestamp {
                seconds: 1_780_000_000,
                nanos: 0,
            }),
            survey: Some(SurveyAnswer {
                survey_id: "post-call".into(),
                nps: Some(12),
                comment: "canary.person@example.org".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    sealer.seal("DE", "ix-1", &payload)?;
    // A subject payload declared as an interaction.
    let subject = some_records("DE", 1).remove(0).payload;
    sealer.seal_bytes(
        "DE",
        "mislabelled",
        RecordKind::Interaction,
        &prost::Message::encode_to_vec(&subject),
    )?;
    let mut gw = gateway_client(&fed).await?;
    let results = ingest_one(&mut gw, sealer.finish()).await?;
    assert_eq!(results[0].reason, RejectReason::PayloadInvalid as i32);
    assert!(
        results[0]
            .detail
            .contains("payload.interaction.survey.nps: must be 0 to 10")
    );
    assert!(!results[0].detail.contains("canary"));
    assert_eq!(results[1].reason, RejectReason::KindMismatch as i32);
    Ok(())
}

/// Inputs a black-box client found answered badly (issue 27): each now gets a clear error
/// naming its field, and an answer bounded in size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_inputs_get_bounded_clear_errors() -> anyhow::Result<()> {
    use domicile_proto::pb::{
        RecordPayload, SubjectRecord, SubjectRef, SubjectRequestKind, SubmitSubjectRequestRequest,
        TimeRange, record_payload::Record,
    };
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let mut gw = gateway_client(&fed).await?;

    // 10,000 unknown regions: the first ten named, and a count.
    let err = gw
        .aggregate(AggregateRequest {
            tenant_id: TENANT.into(),
            query: Some(AggregateQuery {
                purpose: Purpose::CxAnalytics as i32,
                metrics: vec![Metric::Nps as i32],
                ..Default::default()
            }),
            regions: (0..10_000).map(|i| format!("nowhere-{i}")).collect(),
            require_all_regions: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().len() < 2_000, "{} bytes", err.message().len());
    assert!(
        err.message().ends_with("and 9990 more"),
        "{}",
        err.message()
    );
    assert_eq!(field_violations(&err).len(), 10);

    // A timestamp whose nanos are out of range.
    let bad = |nanos| prost_types::Timestamp {
        seconds: 1_780_000_000,
        nanos,
    };
    for nanos in [-1, 1_000_000_000] {
        let err = gw
            .aggregate(AggregateRequest {
                tenant_id: TENANT.into(),
                query: Some(AggregateQuery {
                    purpose: Purpose::CxAnalytics as i32,
                    metrics: vec![Metric::Nps as i32],
                    time_range: Some(TimeRange {
                        start: Some(bad(nanos)),
                        end: None,
                    }),
                    ..Default::default()
                }),
                regions: vec![],
                require_all_regions: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            field_violations(&err)[0].field,
            "query.time_range.start.nanos"
        );
    }

    // A low-order X25519 key as the export's recipient: refused as input, not an internal
    // error when sealing.
    let err = gw
        .submit_subject_request(fed.signed(SubmitSubjectRequestRequest {
            verification: Some(domicile_proto::rights::verified_by_platform(
                "test-session",
                "test-platform",
            )),
            tenant_id: TENANT.into(),
            subject: Some(SubjectRef {
                country: "DE".into(),
                external_id: "cust-1".into(),
            }),
            kind: SubjectRequestKind::Access as i32,
            actor: "dpo".into(),
            recipient_public_key: vec![0; 32],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(field_violations(&err)[0].field, "recipient_public_key");

    // A birth year after the current one, and a country in lower case.
    let key = key_of(&fed, "eu-de").await?;
    let mut sealer = EnvelopeSealer::new(TENANT, "eu-de", &key)?;
    let next_year = domicile_proto::domain::current_year() + 1;
    sealer.seal(
        "DE",
        "born-next-year",
        &RecordPayload {
            record: Some(Record::Subject(SubjectRecord {
                external_id: "cust-young".into(),
                birth_year: next_year,
                ..Default::default()
            })),
        },
    )?;
    sealer.seal("de", "lower-case", &some_records("DE", 1)[0].payload)?;
    let results = ingest_one(&mut gw, sealer.finish()).await?;
    assert_eq!(results[0].reason, RejectReason::PayloadInvalid as i32);
    assert!(
        results[0].detail.contains("payload.subject.birth_year"),
        "{}",
        results[0].detail
    );
    assert_eq!(results[1].reason, RejectReason::MetadataInvalid as i32);
    assert!(
        results[1]
            .detail
            .contains("records[1].country: must be an ISO 3166-1 alpha-2 code"),
        "{}",
        results[1].detail
    );
    assert_eq!(subjects_in(&fed, "eu-de"), 0, "nothing stored");
    Ok(())
}

/// Sends raw bytes as a request body (what a broken or hostile client sends).
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// A body that is not protobuf, or a string that is not UTF-8, is the caller's error:
/// `INVALID_ARGUMENT` naming the field, not `INTERNAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_body_is_invalid_argument_naming_the_field() -> anyhow::Result<()> {
    let fed = federation(&[("eu-de", &["DE"])]).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", fed.gateway_addr))?
        .connect()
        .await?;
    for (path, body, field) in [
        // tenant_id (field 1) holding bytes that are not UTF-8.
        (
            "/domicile.v1.Gateway/Aggregate",
            vec![0x0a, 0x02, 0xff, 0xfe],
            "tenant_id",
        ),
        (
            "/domicile.v1.Gateway/Ingest",
            vec![0x0a, 0x02, 0xc3, 0x28],
            "tenant_id",
        ),
        // A length that runs past the end of the body.
        (
            "/domicile.v1.Gateway/ListRegions",
            vec![0x0a, 0x05, b'a'],
            "(message)",
        ),
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await?;
        let status = grpc
            .unary::<Vec<u8>, Vec<u8>, _>(
                tonic::Request::new(body),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{path}: {status:?}"
        );
        assert_eq!(field_violations(&status)[0].field, field, "{path}");
    }
    Ok(())
}
