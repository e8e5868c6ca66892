//! Audit witnessing as a gateway call: fetch a region's audit-chain head, check it against the
//! one witnessed before ([`crate::federation::witness`]), keep it when it extends it, and
//! report a fork loudly. [`witness_loop`] does it for every region on a timer.

use crate::{
    error::GatewayError, federation::directory::Region, federation::fanout::request,
    gateway::Gateway, metrics::RegionLabels,
};
use domicile_proto::pb::{
    AuditCheckpoint, AuditWitness, AuditWitnessStatus, RegionalNodeGetAuditCheckpointRequest,
};
use std::time::Duration;

impl Gateway {
    /// Fetches `region`'s audit head, checks it against the witnessed one and keeps it when it
    /// extends it. A fork is recorded (metric, log, verdict) and answered as
    /// [`GatewayError::AuditFork`].
    pub async fn witness_region(
        &self,
        region: &Region,
        deadline: Duration,
    ) -> Result<(AuditCheckpoint, AuditWitness), GatewayError> {
        let witness = self.witness();
        let known_seq = witness.witnessed(&region.id).map_or(0, |w| w.seq);
        let mut client = region.client.clone();
        let call = client.get_audit_checkpoint(request(
            RegionalNodeGetAuditCheckpointRequest { known_seq },
            deadline,
        ));
        let answer = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(GatewayError::Region(region.id.clone(), status)),
            Err(_) => {
                return Err(GatewayError::RegionsDeadline(format!(
                    "{} (no answer within {} ms)",
                    region.id,
                    deadline.as_millis()
                )));
            }
        };
        let checkpoint = answer.checkpoint.unwrap_or_default();
        let verdict = witness.judge(&region.id, &checkpoint, &answer.known_hash);
        let labels = RegionLabels {
            region: region.id.clone(),
        };
        witness.last.insert(region.id.clone(), verdict.clone());
        if verdict.status == AuditWitnessStatus::Fork as i32 {
            self.metrics().audit_forks.get_or_create(&labels).inc();
            self.metrics().audit_forked.get_or_create(&labels).set(1);
            tracing::error!(
                region = %region.id,
                witnessed_seq = verdict.witnessed_seq,
                presented_seq = checkpoint.seq,
                detail = %verdict.detail,
                "AUDIT LOG FORK: the region's audit head does not extend the witnessed one"
            );
            return Err(GatewayError::AuditFork(
                region.id.clone(),
                verdict.detail.clone(),
            ));
        }
        self.metrics().audit_forked.get_or_create(&labels).set(0);
        Ok((checkpoint, verdict))
    }
}

/// Witnesses every region's head every `audit_witness_seconds` (as configured at each round).
pub async fn witness_loop(gateway: Gateway) {
    loop {
        let config = gateway.config();
        if config.audit_witness_seconds == 0 {
            tokio::time::sleep(Duration::from_secs(60)).await;
            continue;
        }
        tokio::time::sleep(Duration::from_secs(config.audit_witness_seconds)).await;
        let timeout = Duration::from_millis(config.probe_timeout_ms);
        let directory = gateway.directory();
        let rounds = directory.regions().iter().map(|r| {
            let gateway = gateway.clone();
            async move {
                if let Err(e) = gateway.witness_region(r, timeout).await
                    && !matches!(e, GatewayError::AuditFork(..))
                {
                    tracing::debug!(region = %r.id, error = %e, "audit witness round: no head");
                }
            }
        });
        futures::future::join_all(rounds).await;
    }
}
