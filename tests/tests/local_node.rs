//! The in-country `LocalNode` listener, secured (issue 24, item 1): mutual TLS with the
//! region's own CA, only the callers named in `[[local_principals]]`, each to its role's
//! methods, every call audited under the caller's identity. And in-country ingest in clear
//! (item 2): the sealed path's checks and results, idempotent, batched or streamed, for the
//! integration role only.

use std::net::SocketAddr;

use domicile_node::{
    Node, NodeConfig,
    config::{LocalPrincipal, LocalRole, LocalTls},
};
use domicile_proto::pb::{
    AggregateQuery, Channel as CxChannel, Dimension, InteractionRecord,
    ListIncidentSubjectsRequest, LocalNodeAggregateRequest, LocalNodeIngestRequest,
    LocalNodeIngestStreamRequest, LocalRecord, Metric, Purpose, RecordPayload, RecordStatus,
    RejectReason, SubjectRecord, local_node_client::LocalNodeClient, record_payload::Record,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

const DPO: &str = "dpo.eu-de.cx.example";
const SUPERVISOR: &str = "supervisor.eu-de.cx.example";
const AGENT: &str = "agent-7.eu-de.cx.example";
const STRANGER: &str = "someone.eu-de.cx.example";
const CRM: &str = "crm.eu-de.cx.example";

/// A client of the listener at `addr` presenting `identity`'s certificate (`None`: none).
async fn client(
    pki: &domicile::certs::Pki,
    addr: SocketAddr,
    identity: Option<&str>,
) -> Result<LocalNodeClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.ca()).unwrap()))
        .domain_name("localhost");
    if let Some(id) = identity {
        let (cert, key) = pki.pair(id);
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(LocalNodeClient::new(channel))
}

fn local_record(seq: u32, key: &str, payload: RecordPayload) -> LocalRecord {
    LocalRecord {
        seq,
        idempotency_key: key.into(),
        country: "DE".into(),
        payload: Some(payload),
    }
}

fn subject_payload(id: &str) -> RecordPayload {
    RecordPayload {
        record: Some(Record::Subject(SubjectRecord {
            external_id: id.into(),
            full_name: format!("Name of {id}"),
            ..Default::default()
        })),
    }
}

fn interaction_payload(subject: &str, id: &str) -> RecordPayload {
    RecordPayload {
        record: Some(Record::Interaction(InteractionRecord {
            interaction_id: id.into(),
            subject_external_id: subject.into(),
            channel: CxChannel::Phone as i32,
            started_at: domicile_tests::ts(1_790_000_000),
            handle_time_seconds: 120,
            outcome: "resolved".into(),
            ..Default::default()
        })),
    }
}

fn aggregate() -> LocalNodeAggregateRequest {
    LocalNodeAggregateRequest {
        tenant_id: "acme".into(),
        query: Some(AggregateQuery {
            purpose: Purpose::CxAnalytics as i32,
            metrics: vec![Metric::Count as i32],
            group_by: vec![Dimension::Country as i32],
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_named_callers_reach_their_roles_methods_over_mutual_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The region's own CA: the stranger's certificate is from it too, but is not named.
    let pki = domicile::certs::generate_local(
        &dir.path().join("local-pki"),
        &[DPO, SUPERVISOR, AGENT, STRANGER, CRM],
    )?;
    let mut config = NodeConfig::new("eu-de", &["DE"], dir.path().join("n.sqlite"));
    config.insecure_plaintext = true; // the federation listener is not served here
    let (cert_file, key_file) = pki.pair("local");
    config.local_tls = Some(LocalTls {
        cert_file,
        key_file,
        client_ca_file: pki.ca(),
    });
    config.local_principals = vec![
        LocalPrincipal {
            identity: DPO.into(),
            role: LocalRole::RegionalDpo,
        },
        LocalPrincipal {
            identity: SUPERVISOR.into(),
            role: LocalRole::Supervisor,
        },
        LocalPrincipal {
            identity: AGENT.into(),
            role: LocalRole::Agent,
        },
        LocalPrincipal {
            identity: CRM.into(),
            role: LocalRole::Integration,
        },
    ];
    domicile_node::store::keys::create_region_keys(&config)?;
    let node = Node::open(config.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(domicile_node::serve_local(
        node.clone(),
        listener,
        std::future::pending(),
    ));

    // The regional DPO and the supervisor get the exact report.
    for who in [DPO, SUPERVISOR] {
        let mut c = client(&pki, addr, Some(who)).await?;
        c.aggregate(aggregate()).await?;
    }
    // The DPO may list an incident's subjects (this one is unknown: past admission).
    let mut dpo = client(&pki, addr, Some(DPO)).await?;
    let unknown = dpo
        .list_incident_subjects(ListIncidentSubjectsRequest {
            tenant_id: "acme".into(),
            incident_id: format!("inc-{}", "0".repeat(32)),
        })
        .await
        .unwrap_err();
    assert_ne!(unknown.code(), Code::PermissionDenied, "{unknown:?}");
    // An agent may do neither; nor may the supervisor list subjects.
    let mut agent = client(&pki, addr, Some(AGENT)).await?;
    let denied = agent.aggregate(aggregate()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("role agent"), "{denied:?}");
    let mut supervisor = client(&pki, addr, Some(SUPERVISOR)).await?;
    let denied = supervisor
        .list_incident_subjects(ListIncidentSubjectsRequest {
            tenant_id: "acme".into(),
            incident_id: format!("inc-{}", "0".repeat(32)),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // A certificate of the same CA that is not a local principal: refused.
    let mut stranger = client(&pki, addr, Some(STRANGER)).await?;
    let denied = stranger.aggregate(aggregate()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // No client certificate: the handshake refuses it (at connect, or at the first call).
    match client(&pki, addr, None).await {
        Err(_) => {}
        Ok(mut anonymous) => {
            let refused = anonymous.aggregate(aggregate()).await.unwrap_err();
            assert_ne!(refused.code(), Code::Ok);
        }
    }
    // Plaintext to the TLS listener: nothing.
    let plain = async {
        let ch = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        LocalNodeClient::new(ch)
            .aggregate(aggregate())
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    assert!(plain.is_err());

    // In-country ingest, in clear, for the integration role only.
    let mut crm = client(&pki, addr, Some(CRM)).await?;
    let batch = |records| LocalNodeIngestRequest {
        tenant_id: "acme".into(),
        records,
    };
    let first = crm
        .ingest(batch(vec![
            local_record(0, "s-c-1", subject_payload("c-1")),
            local_record(1, "i-c-1-0", interaction_payload("c-1", "i-c-1-0")),
            local_record(2, "i-c-1-1", interaction_payload("c-1", "i-c-1-1")),
            // Outside the region, and without a record: each refused alone, with its field.
            LocalRecord {
                country: "FR".into(),
                ..local_record(3, "s-c-fr", subject_payload("c-fr"))
            },
            LocalRecord {
                payload: None,
                ..local_record(4, "s-empty", subject_payload("x"))
            },
        ]))
        .await?
        .into_inner()
        .results;
    let statuses: Vec<i32> = first.iter().map(|r| r.status).collect();
    let accepted = RecordStatus::Accepted as i32;
    let rejected = RecordStatus::Rejected as i32;
    assert_eq!(
        statuses,
        [accepted, accepted, accepted, rejected, rejected],
        "{first:?}"
    );
    assert_eq!(
        first[3].reason,
        RejectReason::CountryOutsideJurisdiction as i32
    );
    assert!(
        first[3].detail.starts_with("records[3].country"),
        "{first:?}"
    );
    assert!(
        first[4].detail.starts_with("records[4].payload"),
        "{first:?}"
    );
    // Stored as sealed ingest stores: by reference, readable in the region.
    let profile = node.profile_of("acme", "c-1")?.expect("a profile");
    assert_eq!(profile.full_name, "Name of c-1");
    // Sent again: duplicates, nothing changes.
    let again = crm
        .ingest(batch(vec![local_record(
            0,
            "s-c-1",
            subject_payload("c-1"),
        )]))
        .await?
        .into_inner()
        .results;
    assert_eq!(again[0].status, RecordStatus::Duplicate as i32);
    // The streaming path: batches answered in order.
    let batches: Vec<LocalNodeIngestStreamRequest> = (0..3)
        .map(|b| LocalNodeIngestStreamRequest {
            tenant_id: "acme".into(),
            records: (0..5)
                .map(|i| {
                    let id = format!("bulk-{b}-{i}");
                    local_record(i, &format!("s-{id}"), subject_payload(&id))
                })
                .collect(),
        })
        .collect();
    let mut answers = crm
        .ingest_stream(tokio_stream::iter(batches))
        .await?
        .into_inner();
    let mut answered = Vec::new();
    while let Some(a) = answers.message().await? {
        answered.push(a.results);
    }
    assert_eq!(answered.len(), 3);
    for (b, results) in answered.iter().enumerate() {
        assert_eq!(results.len(), 5);
        assert!(results.iter().all(|r| r.status == accepted), "{results:?}");
        assert_eq!(results[4].idempotency_key, format!("s-bulk-{b}-4"));
    }
    assert!(node.profile_of("acme", "bulk-2-4")?.is_some());
    // Nobody else may ingest.
    for who in [AGENT, DPO] {
        let mut c = client(&pki, addr, Some(who)).await?;
        let denied = c
            .ingest(batch(vec![local_record(0, "s-z", subject_payload("z"))]))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{who}: {denied:?}");
    }
    assert!(node.profile_of("acme", "z")?.is_none());

    // The audit log names who asked, with their role.
    let conn = rusqlite::Connection::open(dir.path().join("n.sqlite"))?;
    let principals: Vec<String> = conn
        .prepare("SELECT details FROM audit_log WHERE kind = 'local_aggregate' ORDER BY seq")?
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|d| {
            let d: serde_json::Value = serde_json::from_str(&d?).unwrap();
            Ok(d["principal"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(
        principals,
        [
            format!("local:{DPO}/regional_dpo"),
            format!("local:{SUPERVISOR}/supervisor")
        ]
    );
    Ok(())
}
