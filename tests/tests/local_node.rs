//! The in-country `LocalNode` listener, secured (issue 24, item 1): mutual TLS with the
//! region's own CA, only the callers named in `[[local_principals]]`, each to its role's
//! methods, every call audited under the caller's identity; and a node that would serve it
//! off loopback without TLS does not start.

use std::net::SocketAddr;

use domicile_node::{
    Node, NodeConfig,
    config::{LocalPrincipal, LocalRole, LocalTls},
};
use domicile_proto::pb::{
    AggregateQuery, Dimension, ListIncidentSubjectsRequest, LocalNodeAggregateRequest, Metric,
    Purpose, local_node_client::LocalNodeClient,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

const DPO: &str = "dpo.eu-de.cx.example";
const SUPERVISOR: &str = "supervisor.eu-de.cx.example";
const AGENT: &str = "agent-7.eu-de.cx.example";
const STRANGER: &str = "someone.eu-de.cx.example";

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
        &[DPO, SUPERVISOR, AGENT, STRANGER],
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
    ];
    domicile_node::keys::create_region_keys(&config)?;
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
