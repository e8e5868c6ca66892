//! A malicious gateway, for the attack tests (DESIGN.md §1: the gateway is untrusted).
//!
//! [`MaliciousGateway`] serves the gateway API on a loopback port and relays every call to a
//! real gateway behind it, tampering on the way as configured: it substitutes a region's
//! sealing key (its own, re-signed with its own identity key, unsigned, or a recorded
//! statement), swaps the recipient key of exports, strips or forges the DPO's signature, keeps
//! every signed request to replay later, and answers audit-head requests with a stale head.
//! It keeps its loot in [`Loot`]: the envelopes it received for the target region and how many
//! records it could open with its own key. The tests assert that every attack fails at the
//! client or at the node, and that the loot stays empty.
//!
//! A compromised gateway also holds the gateway's mutual-TLS identity and can call a node
//! directly; the tests do that with [`crate::federation::Federation`]'s PKI.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use domicile_proto::{
    domain::unix_now,
    pb::{
        AggregateRequest, AggregateResponse, CheckContactPermissionRequest,
        CheckContactPermissionResponse, ConfirmConsentRequest, ConfirmConsentResponse,
        FetchSubjectRequestExportRequest, FetchSubjectRequestExportResponse,
        GetAuditCheckpointRequest, GetAuditCheckpointResponse, GetConsentRequest,
        GetConsentResponse, GetIncidentRequest, GetIncidentResponse, GetOverviewRequest,
        GetOverviewResponse, GetSubjectRequestRequest, GetSubjectRequestResponse, IngestRequest,
        IngestResponse, ListRegionsRequest, ListRegionsResponse, ListSubjectRequestsRequest,
        ListSubjectRequestsResponse, PlaceLegalHoldRequest, PlaceLegalHoldResponse,
        QueryRecordsRequest, QueryRecordsResponse, RecordConsentRequest, RecordConsentResponse,
        ReleaseLegalHoldRequest, ReleaseLegalHoldResponse, ReportIncidentRequest,
        ReportIncidentResponse, SealingKey, SealingKeyStatement, SignedSealingKey,
        SubmitSubjectRequestRequest, SubmitSubjectRequestResponse, UpdateSubjectRequestRequest,
        UpdateSubjectRequestResponse, WithdrawConsentRequest, WithdrawConsentResponse,
        gateway_server::{Gateway as GatewayApi, GatewayServer},
    },
    seal::{EnvelopeOpener, SUITE, SealingKeyPair},
    trust::{DpoSigned, sign_request},
};
use ed25519_dalek::SigningKey;
use futures::Stream;
use tonic::{Request, Response, Status};

/// What the malicious gateway does to the sealing key it relays for the target region.
#[derive(Debug, Clone, Default)]
pub enum KeyAttack {
    /// Relay it honestly.
    #[default]
    None,
    /// Its own key, in the plain copy and in a statement re-signed with its own identity key.
    Substitute,
    /// Its own key in the plain copy; the region's signed statement left as it is.
    SwapPlainKey,
    /// Its own key, and no signed statement at all.
    Unsigned,
    /// This signed statement (an expired one recorded earlier, or another region's), with the
    /// statement's key as the plain copy.
    Relay(SignedSealingKey),
}

/// What the malicious gateway does to requests that carry the DPO's signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DpoAttack {
    /// Relay them honestly.
    #[default]
    None,
    /// Replace an export's recipient key with its own (the signature left as it is).
    SwapRecipient,
    /// Remove the signature (claiming the DPO's authority itself).
    Strip,
    /// Sign with its own Ed25519 key instead.
    OwnKey,
}

/// The configuration of a [`MaliciousGateway`].
#[derive(Debug, Clone, Default)]
pub struct Attacks {
    /// The region whose key is attacked.
    pub target: String,
    /// The sealing-key attack.
    pub key: KeyAttack,
    /// The DPO-signature attack.
    pub dpo: DpoAttack,
    /// Answer `GetAuditCheckpoint` with the first head seen for the region.
    pub stale_audit_head: bool,
}

/// What the attacker got hold of, and what it kept to replay.
#[derive(Debug, Default)]
pub struct Loot {
    /// Envelopes for the target region received from clients.
    pub envelopes: AtomicU64,
    /// Records in them the attacker opened with its own key.
    pub records_read: AtomicU64,
    /// Signed subject requests as received (to replay).
    pub subject_requests: Mutex<Vec<SubmitSubjectRequestRequest>>,
    /// Signed legal holds as received (to replay).
    pub holds: Mutex<Vec<PlaceLegalHoldRequest>>,
    /// Signed incident reports as received (to replay).
    pub incidents: Mutex<Vec<ReportIncidentRequest>>,
    /// Signed hold releases as received (to replay).
    pub releases: Mutex<Vec<ReleaseLegalHoldRequest>>,
    /// Signed steps of subject requests as received (to replay).
    pub case_steps: Mutex<Vec<UpdateSubjectRequestRequest>>,
    /// The first audit head seen per region.
    first_heads: Mutex<HashMap<String, GetAuditCheckpointResponse>>,
}

/// A running malicious gateway.
pub struct MaliciousGateway {
    /// Where it listens (plain HTTP/2 on loopback).
    pub addr: SocketAddr,
    /// What it got.
    pub loot: Arc<Loot>,
    /// Its own sealing key pair (what it substitutes).
    pub sealing: Arc<SealingKeyPair>,
    /// Its own Ed25519 key (its "identity" and its forged DPO key).
    pub identity: SigningKey,
}

impl MaliciousGateway {
    /// Starts one in front of the gateway at `upstream` (plain HTTP/2, no token).
    pub async fn start(upstream: SocketAddr, attacks: Attacks) -> anyhow::Result<Self> {
        let upstream = crate::client::connect(upstream).await?;
        let sealing = Arc::new(SealingKeyPair::generate());
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
        let identity = SigningKey::from_bytes(&seed);
        let loot = Arc::new(Loot::default());
        let service = Relay {
            upstream,
            attacks,
            loot: loot.clone(),
            sealing: sealing.clone(),
            identity: identity.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok(Self {
            addr,
            loot,
            sealing,
            identity,
        })
    }
}

struct Relay {
    upstream: domicile_client::Gateway,
    attacks: Attacks,
    loot: Arc<Loot>,
    sealing: Arc<SealingKeyPair>,
    identity: SigningKey,
}

impl Relay {
    fn client(&self) -> domicile_client::Gateway {
        self.upstream.clone()
    }

    fn own_key(&self) -> SealingKey {
        SealingKey {
            key_id: self.sealing.public().key_id().to_owned(),
            public_key: self.sealing.public().as_bytes().to_vec(),
            suite: SUITE.to_owned(),
        }
    }

    /// The DPO attack applied to a signed request; the original kept for replay.
    fn tamper<R: DpoSigned>(&self, mut request: R, keep: &Mutex<Vec<R>>) -> R {
        if request.dpo_signature().is_some() {
            keep.lock().expect("loot lock").push(request.clone());
        }
        match self.attacks.dpo {
            DpoAttack::None | DpoAttack::SwapRecipient => {}
            DpoAttack::Strip => *request.dpo_signature_mut() = None,
            DpoAttack::OwnKey => sign_request(&mut request, &self.identity, unix_now()),
        }
        request
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GatewayApi for Relay {
    async fn list_regions(
        &self,
        request: Request<ListRegionsRequest>,
    ) -> Answer<ListRegionsResponse> {
        let mut answer = self
            .client()
            .list_regions(request.into_inner())
            .await?
            .into_inner();
        for region in answer
            .regions
            .iter_mut()
            .filter(|r| r.region_id == self.attacks.target)
        {
            match &self.attacks.key {
                KeyAttack::None => {}
                KeyAttack::Substitute => {
                    let statement = SealingKeyStatement {
                        region_id: region.region_id.clone(),
                        countries: region.countries.clone(),
                        key_id: self.sealing.public().key_id().to_owned(),
                        public_key: self.sealing.public().as_bytes().to_vec(),
                        suite: SUITE.to_owned(),
                        not_before: unix_now() - 60,
                        not_after: unix_now() + 86_400,
                        policy_versions: Vec::new(),
                    };
                    region.sealing_key = Some(self.own_key());
                    region.signed_sealing_key = Some(domicile_proto::trust::sign_statement(
                        &statement,
                        &self.identity,
                    ));
                }
                KeyAttack::SwapPlainKey => region.sealing_key = Some(self.own_key()),
                KeyAttack::Unsigned => {
                    region.sealing_key = Some(self.own_key());
                    region.signed_sealing_key = None;
                }
                KeyAttack::Relay(signed) => {
                    use prost::Message;
                    let statement = SealingKeyStatement::decode(signed.statement.as_slice())
                        .map_err(|_| Status::internal("the recorded statement does not decode"))?;
                    region.sealing_key = Some(SealingKey {
                        key_id: statement.key_id,
                        public_key: statement.public_key,
                        suite: statement.suite,
                    });
                    region.signed_sealing_key = Some(signed.clone());
                }
            }
        }
        Ok(Response::new(answer))
    }

    async fn ingest(&self, request: Request<IngestRequest>) -> Answer<IngestResponse> {
        let request = request.into_inner();
        for envelope in request
            .envelopes
            .iter()
            .filter(|e| e.region_id == self.attacks.target)
        {
            self.loot.envelopes.fetch_add(1, Ordering::Relaxed);
            if let Ok(opener) = EnvelopeOpener::new(
                &self.sealing,
                &request.tenant_id,
                &envelope.region_id,
                &envelope.encapsulated_key,
            ) {
                let read = envelope
                    .records
                    .iter()
                    .filter(|r| opener.open(r).is_ok())
                    .count();
                self.loot
                    .records_read
                    .fetch_add(read as u64, Ordering::Relaxed);
            }
        }
        Ok(Response::new(
            self.client().ingest(request).await?.into_inner(),
        ))
    }

    async fn aggregate(&self, request: Request<AggregateRequest>) -> Answer<AggregateResponse> {
        Ok(Response::new(
            self.client()
                .aggregate(request.into_inner())
                .await?
                .into_inner(),
        ))
    }

    type QueryRecordsStream =
        Pin<Box<dyn Stream<Item = Result<QueryRecordsResponse, Status>> + Send>>;

    async fn query_records(
        &self,
        request: Request<QueryRecordsRequest>,
    ) -> Answer<Self::QueryRecordsStream> {
        let stream = self
            .client()
            .query_records(request.into_inner())
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn check_contact_permission(
        &self,
        request: Request<CheckContactPermissionRequest>,
    ) -> Answer<CheckContactPermissionResponse> {
        let answer = self
            .client()
            .check_contact_permission(request.into_inner())
            .await?;
        Ok(Response::new(answer.into_inner()))
    }

    async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Answer<RecordConsentResponse> {
        Ok(Response::new(
            self.client()
                .record_consent(request.into_inner())
                .await?
                .into_inner(),
        ))
    }

    async fn confirm_consent(
        &self,
        request: Request<ConfirmConsentRequest>,
    ) -> Answer<ConfirmConsentResponse> {
        Ok(Response::new(
            self.client()
                .confirm_consent(request.into_inner())
                .await?
                .into_inner(),
        ))
    }

    async fn withdraw_consent(
        &self,
        request: Request<WithdrawConsentRequest>,
    ) -> Answer<WithdrawConsentResponse> {
        Ok(Response::new(
            self.client()
                .withdraw_consent(request.into_inner())
                .await?
                .into_inner(),
        ))
    }

    async fn get_consent(&self, request: Request<GetConsentRequest>) -> Answer<GetConsentResponse> {
        Ok(Response::new(
            self.client()
                .get_consent(request.into_inner())
                .await?
                .into_inner(),
        ))
    }

    async fn get_audit_checkpoint(
        &self,
        request: Request<GetAuditCheckpointRequest>,
    ) -> Answer<GetAuditCheckpointResponse> {
        let region = request.get_ref().region_id.clone();
        let answer = self
            .client()
            .get_audit_checkpoint(request.into_inner())
            .await?
            .into_inner();
        let mut first = self.loot.first_heads.lock().expect("loot lock");
        let first = first.entry(region).or_insert_with(|| answer.clone());
        Ok(Response::new(if self.attacks.stale_audit_head {
            first.clone()
        } else {
            answer
        }))
    }

    async fn open_follow_up(
        &self,
        request: Request<domicile_proto::pb::OpenFollowUpRequest>,
    ) -> Answer<domicile_proto::pb::OpenFollowUpResponse> {
        Ok(Response::new(
            self.client()
                .open_follow_up(request.into_inner())
                .await?
                .into_inner(),
        ))
    }

    async fn list_follow_ups(
        &self,
        request: Request<domicile_proto::pb::ListFollowUpsRequest>,
    ) -> Answer<domicile_proto::pb::ListFollowUpsResponse> {
        Ok(Response::new(
            self.client()
                .list_follow_ups(request.into_inner())
                .await?
                .into_inner(),
        ))
    }

    async fn get_overview(
        &self,
        request: Request<GetOverviewRequest>,
    ) -> Answer<GetOverviewResponse> {
        Ok(Response::new(
            self.client()
                .get_overview(request.into_inner())
                .await?
                .into_inner(),
        ))
    }

    async fn report_incident(
        &self,
        request: Request<ReportIncidentRequest>,
    ) -> Answer<ReportIncidentResponse> {
        let request = self.tamper(request.into_inner(), &self.loot.incidents);
        Ok(Response::new(
            self.client().report_incident(request).await?.into_inner(),
        ))
    }

    async fn get_incident(
        &self,
        request: Request<GetIncidentRequest>,
    ) -> Answer<GetIncidentResponse> {
        Ok(Response::new(
            self.client()
                .get_incident(request.into_inner())
                .await?
                .into_inner(),
        ))
    }

    async fn submit_subject_request(
        &self,
        request: Request<SubmitSubjectRequestRequest>,
    ) -> Answer<SubmitSubjectRequestResponse> {
        let mut request = self.tamper(request.into_inner(), &self.loot.subject_requests);
        if self.attacks.dpo == DpoAttack::SwapRecipient && !request.recipient_public_key.is_empty()
        {
            request.recipient_public_key = self.sealing.public().as_bytes().to_vec();
        }
        let answer = self.client().submit_subject_request(request).await?;
        Ok(Response::new(answer.into_inner()))
    }

    async fn get_subject_request(
        &self,
        request: Request<GetSubjectRequestRequest>,
    ) -> Answer<GetSubjectRequestResponse> {
        let answer = self
            .client()
            .get_subject_request(request.into_inner())
            .await?;
        Ok(Response::new(answer.into_inner()))
    }

    async fn update_subject_request(
        &self,
        request: Request<UpdateSubjectRequestRequest>,
    ) -> Answer<UpdateSubjectRequestResponse> {
        let request = self.tamper(request.into_inner(), &self.loot.case_steps);
        Ok(Response::new(
            self.client()
                .update_subject_request(request)
                .await?
                .into_inner(),
        ))
    }

    type FetchSubjectRequestExportStream =
        Pin<Box<dyn Stream<Item = Result<FetchSubjectRequestExportResponse, Status>> + Send>>;

    async fn fetch_subject_request_export(
        &self,
        request: Request<FetchSubjectRequestExportRequest>,
    ) -> Answer<Self::FetchSubjectRequestExportStream> {
        let stream = self
            .client()
            .fetch_subject_request_export(request.into_inner())
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_subject_requests(
        &self,
        request: Request<ListSubjectRequestsRequest>,
    ) -> Answer<ListSubjectRequestsResponse> {
        let answer = self
            .client()
            .list_subject_requests(request.into_inner())
            .await?;
        Ok(Response::new(answer.into_inner()))
    }

    async fn place_legal_hold(
        &self,
        request: Request<PlaceLegalHoldRequest>,
    ) -> Answer<PlaceLegalHoldResponse> {
        let request = self.tamper(request.into_inner(), &self.loot.holds);
        Ok(Response::new(
            self.client().place_legal_hold(request).await?.into_inner(),
        ))
    }

    async fn release_legal_hold(
        &self,
        request: Request<ReleaseLegalHoldRequest>,
    ) -> Answer<ReleaseLegalHoldResponse> {
        let request = self.tamper(request.into_inner(), &self.loot.releases);
        Ok(Response::new(
            self.client()
                .release_legal_hold(request)
                .await?
                .into_inner(),
        ))
    }
}
