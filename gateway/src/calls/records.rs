//! `QueryRecords`: regions' record streams, interleaved into one, with backpressure.
//!
//! One task per region reads its node stream and forwards batches into a small bounded channel;
//! a coordinator forwards them to the client's stream, counts rows per region, stops at the
//! request's limit and at the deadline, and ends the stream with a summary: each region's
//! coverage and its release (the node's attestation, or what the gateway saw cross the border
//! when the region failed). Every channel is bounded, so a client that stops reading stops the
//! coordinator, which stops the region tasks, which stop reading their node streams; HTTP/2
//! flow control then stops the nodes, whose SQL readers block. Nothing buffers without bound.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use domicile_ops::trace;
use domicile_proto::{
    domain::{RecordSpec, TenantId},
    error::Violations,
    pb::{
        PseudonymisedInteraction, QueryRecordsRequest, QueryRecordsResponse, QueryRecordsSummary,
        RegionRelease, RegionalNodeQueryRecordsRequest, ReleaseKind, ResidencyAttestation,
    },
};
use tokio::{sync::mpsc, task::JoinSet};
use tonic::Status;

use crate::{
    error::GatewayError,
    federation::directory::Region,
    federation::fanout::{RegionFailure, coverage, request},
    gateway::{Gateway, combine, nothing_released},
    metrics::GatewayMetrics,
};

/// The client-facing stream: batches of records, then one summary message.
pub type RecordStream = mpsc::Receiver<Result<QueryRecordsResponse, Status>>;

/// Messages buffered towards the client.
const CLIENT_BUFFER: usize = 2;

enum Event {
    Records(usize, Vec<PseudonymisedInteraction>),
    Done(usize, Result<RegionRelease, RegionFailure>),
}

/// Starts streaming `spec` from `regions` and returns the client stream at once.
pub fn stream(
    regions: Vec<Arc<Region>>,
    tenant: TenantId,
    spec: RecordSpec,
    deadline: Duration,
    metrics: GatewayMetrics,
) -> RecordStream {
    let (out, rx) = mpsc::channel(CLIENT_BUFFER);
    tokio::spawn(trace::carried(coordinate(
        regions, tenant, spec, deadline, out, metrics,
    )));
    rx
}

async fn coordinate(
    regions: Vec<Arc<Region>>,
    tenant: TenantId,
    spec: RecordSpec,
    deadline: Duration,
    out: mpsc::Sender<Result<QueryRecordsResponse, Status>>,
    metrics: GatewayMetrics,
) {
    let started = Instant::now();
    let until = tokio::time::Instant::now() + deadline;
    let (events, mut inbox) = mpsc::channel::<Event>(regions.len().max(1));
    let mut tasks = JoinSet::new();
    let message = RegionalNodeQueryRecordsRequest {
        tenant_id: tenant.as_str().to_owned(),
        query: Some(spec.to_query()),
    };
    for (i, region) in regions.iter().enumerate() {
        let mut client = region.client.clone();
        let message = message.clone();
        let events = events.clone();
        tasks.spawn(trace::carried(async move {
            let result = async {
                let mut stream = client
                    .query_records(request(message, deadline))
                    .await?
                    .into_inner();
                let mut release = None;
                while let Some(msg) = stream.message().await? {
                    if !msg.records.is_empty()
                        && events.send(Event::Records(i, msg.records)).await.is_err()
                    {
                        return Err(Status::cancelled("the client went away"));
                    }
                    if msg.release.is_some() {
                        release = msg.release;
                    }
                }
                release.ok_or_else(|| Status::internal("the stream ended without its release"))
            }
            .await;
            let _ = events
                .send(Event::Done(
                    i,
                    result.map_err(|s| RegionFailure::from_status(&s)),
                ))
                .await;
        }));
    }
    drop(events);

    let limit = u64::from(spec.limit);
    let mut sent = 0u64;
    let mut rows = vec![0u64; regions.len()];
    let mut ended: Vec<Option<(Result<RegionRelease, RegionFailure>, Duration)>> =
        (0..regions.len()).map(|_| None).collect();
    loop {
        let event = match tokio::time::timeout_at(until, inbox.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(_) => break, // the deadline: whoever has not finished is reported as late
        };
        match event {
            Event::Records(i, mut batch) => {
                rows[i] += batch.len() as u64;
                // Past the limit, keep draining so that each region's release still arrives.
                let room = usize::try_from(limit.saturating_sub(sent)).unwrap_or(usize::MAX);
                batch.truncate(room);
                if batch.is_empty() {
                    continue;
                }
                sent += batch.len() as u64;
                let msg = QueryRecordsResponse {
                    records: batch,
                    summary: None,
                };
                match tokio::time::timeout_at(until, out.send(Ok(msg))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return, // the client went away; dropping the tasks stops all
                    Err(_) => break,
                }
            }
            Event::Done(i, result) => ended[i] = Some((result, started.elapsed())),
        }
    }
    tasks.abort_all();

    let mut summary = QueryRecordsSummary {
        coverage: Vec::with_capacity(regions.len()),
        attestation: Some(ResidencyAttestation::default()),
        records: sent,
    };
    let attestation = summary.attestation.get_or_insert_default();
    for (i, region) in regions.iter().enumerate() {
        let (result, latency) = ended[i]
            .take()
            .unwrap_or_else(|| (Err(RegionFailure::deadline(deadline)), started.elapsed()));
        summary
            .coverage
            .push(coverage(&region.id, result.as_ref().err(), latency));
        attestation.regions.push(match result {
            Ok(release) => release,
            // What crossed the border before the region failed, as the gateway counted it.
            Err(_) if rows[i] > 0 => RegionRelease {
                region_id: region.id.clone(),
                kind: ReleaseKind::PseudonymisedRecords as i32,
                rows_released: rows[i],
                ..Default::default()
            },
            Err(_) => nothing_released(&region.id),
        });
    }
    metrics.observe_coverage("QueryRecords", &summary.coverage);
    metrics.records_released.inc_by(sent);
    tracing::debug!(tenant = %tenant, records = sent, regions = regions.len(), "records streamed");
    let _ = out
        .send(Ok(QueryRecordsResponse {
            records: Vec::new(),
            summary: Some(summary),
        }))
        .await;
}

impl Gateway {
    /// Streams pseudonymised records from the requested regions (see [`stream`]). The request
    /// is validated before anything is streamed.
    pub fn query_records(
        &self,
        req: QueryRecordsRequest,
        deadline: Duration,
    ) -> Result<RecordStream, GatewayError> {
        let mut v = Violations::new();
        let tenant = TenantId::parse(&req.tenant_id, "tenant_id");
        let spec = RecordSpec::from_query(req.query.as_ref(), "query");
        let regions = self.resolve_regions(&req.regions, &mut v);
        let (tenant, spec) = combine(v, tenant, spec)?;
        Ok(stream(
            regions,
            tenant,
            spec,
            deadline,
            self.metrics.clone(),
        ))
    }
}
