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
//!
//! A call that failed before any of it was sent (no connection to its replica, or a
//! connection the node had told to go away while draining) is sent once more: to another
//! replica in service, or on a new connection to the same one. gRPC clients retry such calls
//! transparently for the same reason: the node cannot have acted on them. A call that reached
//! its replica is never sent again here; its caller gets `UNAVAILABLE` and decides.

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
    conn::{BoxError, CallError, Endpoint, EndpointChannel, Failed, ResponseBody},
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
    retries: prometheus_client::metrics::counter::Counter,
    next: AtomicUsize,
    epoch: Instant,
}

/// The replicas of one region, as one gRPC transport: cheap to clone.
#[derive(Debug, Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

impl Replicas {
    /// The replicas at `endpoints`, all in service; `ejections` counts ejections, `retries`
    /// the calls sent again because their first attempt never left the gateway.
    pub fn new(
        endpoints: Vec<Endpoint>,
        ejections: prometheus_client::metrics::counter::Counter,
        retries: prometheus_client::metrics::counter::Counter,
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
                retries,
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

    /// Calls replica `i`, and ejects it if its connection failed.
    async fn call_on(
        &self,
        i: usize,
        request: http::Request<Body>,
    ) -> Result<http::Response<ResponseBody>, Failed> {
        let result = self.inner.replicas[i].endpoint.call(request).await;
        if let Err(failed) = &result
            && failed.error.is_connection_failure()
        {
            self.eject(i);
        }
        result
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
        let first = self.pick();
        let this = self.clone();
        Box::pin(async move {
            let Failed { error, unsent } = match this.call_on(first, request).await {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            };
            // The first failure ejected `first` if its connection failed, so this is another
            // replica in service when there is one.
            let again = this.pick();
            let request = match unsent {
                // Once, so that a region whose every replica fails answers `UNAVAILABLE` now;
                // and not to a replica that could not be connected to a moment ago.
                Some(request) if again != first || !matches!(error, CallError::Connect(_)) => {
                    request
                }
                _ => return Err(error.into_status()),
            };
            this.inner.retries.inc();
            this.call_on(again, request)
                .await
                .map_err(|failed| failed.error.into_status())
        })
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    fn replicas(n: usize) -> Replicas {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect();
        replicas_at(&urls).0
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

    /// What a test node does with each stream it accepts.
    #[derive(Clone, Copy)]
    enum Node {
        /// Answers `200` with `grpc-status: 0`.
        Answers,
        /// Reads the request, then closes the connection without answering.
        DiesAfterReading,
    }

    /// Connections and streams a test node accepted.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        streams: AtomicUsize,
    }

    /// Serves one HTTP/2 connection as `node` says.
    async fn serve(socket: tokio::net::TcpStream, node: Node, seen: Arc<Seen>) {
        let Ok(mut conn) = h2::server::handshake(socket).await else {
            return;
        };
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            seen.streams.fetch_add(1, Ordering::SeqCst);
            match node {
                Node::Answers => {
                    let mut stream = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let _ = stream.send_trailers(trailers);
                }
                Node::DiesAfterReading => {
                    let mut body = request.into_body();
                    while let Some(Ok(_)) = body.data().await {}
                    return;
                }
            }
        }
    }

    /// A node on a loopback port.
    async fn node(node: Node) -> (String, Arc<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let counted = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, node, counted.clone()));
            }
        });
        (url, seen)
    }

    /// A loopback port nothing listens on.
    async fn refusing() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn replicas_at(urls: &[String]) -> (Replicas, Counter, Counter) {
        let settings = crate::federation::conn::Settings {
            stream_window: 65_535,
            connection_window: 65_535,
        };
        let endpoints = urls
            .iter()
            .map(|url| Endpoint::new(url, None, settings).unwrap())
            .collect();
        let (ejections, retries) = (Counter::default(), Counter::default());
        (
            Replicas::new(endpoints, ejections.clone(), retries.clone()),
            ejections,
            retries,
        )
    }

    fn probe() -> http::Request<Body> {
        http::Request::builder()
            .uri("/domicile.v1.RegionalNode/GetRegionInfo")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_call_that_finds_its_replica_down_is_sent_to_another() {
        let (up, seen) = node(Node::Answers).await;
        let down = refusing().await;
        let (mut r, ejections, retries) = replicas_at(&[down.clone(), up]);
        // Round-robin starts with the replica that refuses connections.
        let response = r.call(probe()).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(seen.streams.load(Ordering::SeqCst), 1);
        assert_eq!(r.ejected(), [down]);
        assert_eq!((ejections.get(), retries.get()), (1, 1));
    }

    #[tokio::test]
    async fn a_call_that_reached_its_replica_is_never_sent_again() {
        // The first replica reads the call and dies; the second would answer.
        let (dying, died) = node(Node::DiesAfterReading).await;
        let (up, seen) = node(Node::Answers).await;
        let (mut r, _, retries) = replicas_at(&[dying.clone(), up]);
        let error = r.call(probe()).await.unwrap_err();
        let status = error.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(died.streams.load(Ordering::SeqCst), 1);
        assert_eq!(
            seen.streams.load(Ordering::SeqCst),
            0,
            "the node may have acted on it: not sent twice"
        );
        assert_eq!(retries.get(), 0);
        assert_eq!(r.ejected(), [dying], "its connection failed");
    }

    #[tokio::test]
    async fn a_lone_replica_that_refuses_connections_is_tried_once_per_call() {
        let (mut r, _, retries) = replicas_at(&[refusing().await]);
        let status = r
            .call(probe())
            .await
            .unwrap_err()
            .downcast::<tonic::Status>()
            .unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(r.inner.replicas[0].endpoint.connection_attempts(), 1);
        assert_eq!(retries.get(), 0);
    }

    #[tokio::test]
    async fn a_call_on_a_connection_told_to_go_away_is_sent_on_a_new_one() {
        // The node's first connection holds one call open and starts draining (GOAWAY); its
        // later connections answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let (told, goaway_seen) = tokio::sync::oneshot::channel();
        let counted = seen.clone();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut first = h2::server::handshake(socket).await.unwrap();
            let held = first.accept().await.unwrap().unwrap();
            first.graceful_shutdown();
            let mut ping = first.ping_pong().unwrap();
            let drive = tokio::spawn(async move { while first.accept().await.is_some() {} });
            // The client answers this ping after it has read the GOAWAY sent before it.
            ping.ping(h2::Ping::opaque()).await.unwrap();
            told.send(()).unwrap();
            while let Ok((socket, _)) = listener.accept().await {
                counted.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, Node::Answers, counted.clone()));
            }
            drop((held, drive));
        });
        let (mut r, ejections, retries) = replicas_at(&[url]);
        let mut held = r.clone();
        let _held = tokio::spawn(async move { held.call(probe()).await });
        goaway_seen.await.unwrap();
        let response = r.call(probe()).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            1,
            "a new connection"
        );
        assert_eq!(seen.streams.load(Ordering::SeqCst), 1);
        assert_eq!((retries.get(), ejections.get()), (1, 0));
    }

    #[tokio::test]
    async fn a_single_endpoint_is_never_taken_out_of_service() {
        let r = replicas(1);
        r.eject(0);
        assert!(r.ejected().is_empty());
        assert_eq!(r.pick(), 0);
    }
}
