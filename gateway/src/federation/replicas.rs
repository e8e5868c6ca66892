//! A region's node replicas: calls go round-robin to the replicas in service; a replica whose
//! connection fails is ejected at once and probed in the background until it answers again.
//!
//! A connection failure (refused, reset or closed, no TLS handshake within the time to connect,
//! [`crate::federation::conn`]) is the only thing that ejects: a gRPC status, even
//! `UNAVAILABLE`, is the node's answer, and a stream the node resets concerns that call alone;
//! neither says anything about the connection. So
//! when a replica dies, the calls it had in flight fail (the gateway reports them as
//! retryable), the first call that finds it gone ejects it, and later calls go to the others.
//! When every replica is ejected, calls still go to the one ejected longest ago, so a region
//! with one endpoint, or all of them down, keeps trying rather than failing without a call.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use domicile_proto::pb::{GetRegionInfoRequest, regional_node_client::RegionalNodeClient};
use tonic::body::Body;

use crate::federation::{
    conn::{BoxError, Endpoint, EndpointChannel, ResponseBody},
    forward::PreEncoded,
};
use tower_service::Service;

/// How often an ejected replica is probed.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// One endpoint of a region.
#[derive(Debug)]
struct Replica {
    endpoint: Arc<Endpoint>,
    /// Set while ejected; the time of the ejection (ms since `epoch`), for picking the one
    /// ejected longest ago when all are.
    ejected: AtomicBool,
    ejected_at: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    replicas: Vec<Replica>,
    ejections: prometheus_client::metrics::counter::Counter,
    next: AtomicUsize,
    epoch: Instant,
}

/// The replicas of one region, as one gRPC transport: cheap to clone.
#[derive(Debug, Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

impl Replicas {
    /// The replicas at `endpoints`, all in service; `ejections` counts ejections.
    pub fn new(
        endpoints: Vec<Endpoint>,
        ejections: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        assert!(!endpoints.is_empty(), "a region has at least one endpoint");
        Self {
            inner: Arc::new(Inner {
                replicas: endpoints
                    .into_iter()
                    .map(|endpoint| Replica {
                        endpoint: Arc::new(endpoint),
                        ejected: AtomicBool::new(false),
                        ejected_at: AtomicU64::new(0),
                    })
                    .collect(),
                ejections,
                next: AtomicUsize::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// The endpoints currently ejected.
    pub fn ejected(&self) -> Vec<String> {
        self.inner
            .replicas
            .iter()
            .filter(|r| r.ejected.load(Ordering::Relaxed))
            .map(|r| r.endpoint.url().to_owned())
            .collect()
    }

    /// The replica for the next call: the next one in service, round-robin; if none is, the
    /// one ejected longest ago.
    fn pick(&self) -> usize {
        let n = self.inner.replicas.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !self.inner.replicas[i].ejected.load(Ordering::Relaxed))
            .unwrap_or_else(|| {
                (0..n)
                    .min_by_key(|&i| self.inner.replicas[i].ejected_at.load(Ordering::Relaxed))
                    .unwrap_or(0)
            })
    }

    /// Takes replica `i` out of service (if it is the only one, it stays the fallback) and
    /// probes it until it answers.
    fn eject(&self, i: usize) {
        let replica = &self.inner.replicas[i];
        replica.ejected_at.store(
            self.inner.epoch.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
        if self.inner.replicas.len() == 1 || replica.ejected.swap(true, Ordering::AcqRel) {
            return; // nothing to balance to, or already ejected and probed
        }
        self.inner.ejections.inc();
        tracing::warn!(endpoint = %replica.endpoint.url(), "region endpoint ejected after a connection failure");
        // The probe holds the replicas weakly: a reload that drops the region ends it.
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                let replica = &inner.replicas[i];
                let mut client = RegionalNodeClient::new(EndpointChannel(replica.endpoint.clone()));
                let probe = client.get_region_info(GetRegionInfoRequest {});
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                    replica.ejected.store(false, Ordering::Release);
                    tracing::info!(endpoint = %replica.endpoint.url(), "region endpoint back in service");
                    return;
                }
            }
        });
    }
}

impl Service<http::Request<Body>> for Replicas {
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for its own replica's connection.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // A request whose message was framed without copying its large fields
        // ([`crate::federation::forward`]): that frame replaces the empty message tonic encoded.
        if let Some(frame) = request.extensions_mut().remove::<PreEncoded>() {
            request = request.map(|_| frame.into_body());
        }
        let i = self.pick();
        let this = self.clone();
        Box::pin(async move {
            match this.inner.replicas[i].endpoint.call(request).await {
                Ok(response) => Ok(response),
                Err(e) => {
                    if e.is_connection_failure() {
                        this.eject(i);
                    }
                    Err(e.into_status())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(n: usize) -> Replicas {
        let settings = crate::federation::conn::Settings {
            stream_window: 65_535,
            connection_window: 65_535,
        };
        let endpoints = (0..n)
            .map(|i| Endpoint::new(&format!("http://127.0.0.1:{}", 1 + i), None, settings).unwrap())
            .collect();
        Replicas::new(endpoints, Default::default())
    }

    fn mark(r: &Replicas, i: usize, at: u64) {
        r.inner.replicas[i].ejected.store(true, Ordering::Relaxed);
        r.inner.replicas[i].ejected_at.store(at, Ordering::Relaxed);
    }

    #[tokio::test]
    async fn calls_go_round_robin_to_replicas_in_service() {
        let r = replicas(3);
        let picks: Vec<usize> = (0..6).map(|_| r.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        mark(&r, 1, 5);
        let picks: Vec<usize> = (0..6).map(|_| r.pick()).collect();
        assert!(
            !picks.contains(&1),
            "an ejected replica gets no call: {picks:?}"
        );
        assert!(picks.contains(&0) && picks.contains(&2));
        assert_eq!(r.ejected(), ["http://127.0.0.1:2"]);
        // All ejected: the one ejected longest ago is still tried.
        mark(&r, 0, 9);
        mark(&r, 2, 7);
        assert!((0..4).all(|_| r.pick() == 1));
    }

    #[tokio::test]
    async fn a_single_endpoint_is_never_taken_out_of_service() {
        let r = replicas(1);
        r.eject(0);
        assert!(r.ejected().is_empty());
        assert_eq!(r.pick(), 0);
    }
}
