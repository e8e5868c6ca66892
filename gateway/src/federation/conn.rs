//! One HTTP/2 connection to one endpoint of a region, driven from the calling task.
//!
//! The gateway's hop to a node used to go through tonic's `Channel`: a tower `Buffer` whose
//! worker task takes each request, then hyper's connection task, which spawns yet another task
//! to send a request's body. Each of those is a task hand-off per call, out and back, and the
//! hop's cost is per call (BENCHMARKS.md, "The hop at concurrency 1"). Here the caller's task
//! opens the stream and queues its HEADERS and DATA itself through the `h2` crate; the only
//! other task is the one driving the connection's I/O.
//!
//! An [`Endpoint`] connects lazily (TCP with `TCP_NODELAY`, then TLS with the gateway's client
//! certificate when the federation uses it, under [`CONNECT_TIMEOUT`]), keeps the connection
//! for every later call, and drops it when it fails, so that the next call connects again. An
//! idle connection is pinged every [`KEEPALIVE_EVERY`]; one that does not answer within
//! [`KEEPALIVE_TIMEOUT`] is closed.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt as _;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Boxed errors, as a gRPC client accepts them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Time allowed to open a connection: TCP, TLS and the HTTP/2 preface.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a connection is pinged, busy or idle.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest header or trailer block a node may send (a status with its details is a few
/// KiB): a node cannot make the gateway buffer more.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// HTTP/2 settings of every connection to a region.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Receive window per stream: what a region's response stream may buffer in the gateway
    /// while its caller is not reading.
    pub stream_window: u32,
    /// Receive window of the whole connection, shared by its streams.
    pub connection_window: u32,
}

/// TLS towards one endpoint: the client configuration and the name its certificate must bear.
#[derive(Clone)]
pub struct Tls {
    /// The connector, with the federation's CA, the gateway's identity and ALPN `h2`.
    pub connector: TlsConnector,
    /// The region's identity, checked against the node's certificate.
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

/// Why an endpoint's URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

/// A live connection: the handle streams are opened on, and whether its I/O task has ended.
#[derive(Debug, Clone)]
struct Live {
    send: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// One endpoint of a region and its connection, opened on first use.
#[derive(Debug)]
pub struct Endpoint {
    url: String,
    scheme: Scheme,
    authority: Authority,
    tls: Option<Tls>,
    settings: Settings,
    live: Mutex<Option<Live>>,
    /// Held while connecting, so that concurrent callers wait for one connection attempt;
    /// it holds the last attempt's error, if it failed.
    connecting: tokio::sync::Mutex<Option<String>>,
    /// Connection attempts finished so far.
    attempts: std::sync::atomic::AtomicU64,
}

impl Endpoint {
    /// The endpoint at `url` (`http://host:port`, or `https://host:port` with `tls`). Nothing
    /// is connected yet.
    pub fn new(url: &str, tls: Option<Tls>, settings: Settings) -> Result<Self, UrlError> {
        let (scheme, authority) = crate::config::endpoint_url(url).map_err(UrlError)?;
        if (scheme == Scheme::HTTPS) != tls.is_some() {
            return Err(UrlError(format!(
                "{url}: https needs the federation's TLS settings, and http must go without"
            )));
        }
        Ok(Self {
            url: url.to_owned(),
            scheme,
            authority,
            tls,
            settings,
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            attempts: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The endpoint's URL, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection, if one is open.
    fn current(&self) -> Option<Live> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .filter(|l| !l.closed.load(Ordering::Acquire))
            .cloned()
    }

    /// Forgets `failed`, unless another call has replaced it already.
    fn forget(&self, failed: &Live) {
        failed.closed.store(true, Ordering::Release);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.closed, &failed.closed))
        {
            live.take();
        }
    }

    /// Connection attempts finished so far.
    #[cfg(test)]
    pub(crate) fn connection_attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }

    /// Whether a connection is open now.
    #[cfg(test)]
    fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// The open connection, or a new one. Callers that waited for an attempt that failed get
    /// its error rather than trying again one after the other: a node that does not answer
    /// costs each of them [`CONNECT_TIMEOUT`] at most, not their number times it.
    async fn connection(&self) -> Result<Live, BoxError> {
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let attempts_seen = self.attempts.load(Ordering::Acquire);
        let mut failure = self.connecting.lock().await;
        if let Some(live) = self.current() {
            return Ok(live);
        }
        if self.attempts.load(Ordering::Acquire) != attempts_seen
            && let Some(failed) = &*failure
        {
            return Err(failed.clone().into());
        }
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "connecting to {}: no connection within {} ms",
                    self.url,
                    CONNECT_TIMEOUT.as_millis()
                )
                .into())
            });
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match connected {
            Ok(live) => {
                *failure = None;
                *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
                Ok(live)
            }
            Err(e) => {
                *failure = Some(e.to_string());
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Live, BoxError> {
        let context = |e: &dyn std::fmt::Display| format!("connecting to {}: {e}", self.url);
        let tcp = TcpStream::connect(self.authority.as_str())
            .await
            .map_err(|e| context(&e))?;
        tcp.set_nodelay(true).map_err(|e| context(&e))?;
        match &self.tls {
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(|e| context(&e))?;
                self.handshake(stream).await
            }
            None => self.handshake(tcp).await,
        }
        .map_err(|e| context(&e).into())
    }

    async fn handshake<T>(&self, io: T) -> Result<Live, h2::Error>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(self.settings.stream_window)
            .initial_connection_window_size(self.settings.connection_window)
            .enable_push(false)
            .max_header_list_size(MAX_HEADER_LIST_BYTES)
            .handshake(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        let mut ping = connection.ping_pong();
        tokio::spawn(async move {
            let keepalive = async {
                let Some(ping) = ping.as_mut() else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(KEEPALIVE_EVERY).await;
                    let answered =
                        tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(h2::Ping::opaque()))
                            .await;
                    if !matches!(answered, Ok(Ok(_))) {
                        return;
                    }
                }
            };
            tokio::select! {
                // The error is the calls' to report: each of them gets it.
                _ = &mut connection => {}
                () = keepalive => {}
            }
            ended.store(true, Ordering::Release);
        });
        Ok(Live { send, closed })
    }

    /// Makes one call: opens a stream, queues the request's headers and body, and returns the
    /// response once its headers arrive. A connection-level failure drops the connection, so
    /// that the next call opens a new one. A call that failed before anything of it was sent
    /// (no connection, or one that had been told to go away) gives its request back in
    /// [`Failed::unsent`], for the caller to send again.
    pub async fn call(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<ResponseBody>, Failed> {
        let live = match self.connection().await {
            Ok(live) => live,
            Err(e) => return Err(Failed::unsent(CallError::Connect(e), request)),
        };
        // `ready` fails, without sending, once the node has sent GOAWAY (a node draining) or
        // the connection has ended: the request is still whole.
        let send = match live.send.clone().ready().await {
            Ok(send) => send,
            Err(e) => {
                self.forget(&live);
                return Err(Failed::unsent(
                    CallError::Stream(self.url.clone(), e),
                    request,
                ));
            }
        };
        let result = self.exchange(send, request).await;
        if let Err(e) = &result
            && e.is_connection_failure()
        {
            self.forget(&live);
        }
        result.map_err(Failed::sent)
    }

    async fn exchange(
        &self,
        mut send: h2::client::SendRequest<Bytes>,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<ResponseBody>, CallError> {
        let h2 = |e| CallError::Stream(self.url.clone(), e);
        let (mut parts, mut body) = request.into_parts();
        // tonic's client gives the path; HTTP/2 needs the scheme and authority too.
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        parts.uri = http::Uri::from_parts(uri).map_err(|e| CallError::Request(e.into()))?;
        let empty = body.is_end_stream();
        let (response, mut stream) = send
            .send_request(http::Request::from_parts(parts, ()), empty)
            .map_err(h2)?;
        if !empty {
            // Each data frame is queued as the body yields it, the last one with END_STREAM;
            // h2 sends them as the node's flow-control window allows.
            let mut pending: Option<Bytes> = None;
            let mut trailers = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    stream.send_reset(h2::Reason::CANCEL);
                    CallError::Request(e.into())
                })?;
                match frame.into_data() {
                    Ok(data) => {
                        if let Some(previous) = pending.replace(data) {
                            stream.send_data(previous, false).map_err(h2)?;
                        }
                    }
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        break;
                    }
                }
            }
            match (pending, trailers) {
                (Some(last), None) => stream.send_data(last, true).map_err(h2)?,
                (pending, Some(trailers)) => {
                    if let Some(last) = pending {
                        stream.send_data(last, false).map_err(h2)?;
                    }
                    stream.send_trailers(trailers).map_err(h2)?;
                }
                (None, None) => stream.send_data(Bytes::new(), true).map_err(h2)?,
            }
        }
        let response = response.await.map_err(h2)?;
        Ok(response.map(|recv| ResponseBody {
            recv,
            data_done: false,
        }))
    }
}

/// A call that failed, with its request if none of it was sent.
#[derive(Debug)]
pub struct Failed {
    /// Why.
    pub error: CallError,
    /// The request, whole, when the call failed before any of it left the gateway: sending
    /// it again cannot make the node act on it twice.
    pub unsent: Option<http::Request<tonic::body::Body>>,
}

impl Failed {
    fn unsent(error: CallError, request: http::Request<tonic::body::Body>) -> Self {
        Self {
            error,
            unsent: Some(request),
        }
    }

    fn sent(error: CallError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

/// A failed call to an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be opened.
    #[error("{0}")]
    Connect(BoxError),
    /// The stream or its connection failed.
    #[error("{0}: {1}")]
    Stream(String, #[source] h2::Error),
    /// The request could not be sent as given (its body failed, or its path is not one).
    #[error("the request: {0}")]
    Request(#[source] BoxError),
}

impl CallError {
    /// Whether the connection failed, rather than one stream or one request: the node
    /// resetting a stream, or a request the gateway could not send, leaves it in service.
    pub fn is_connection_failure(&self) -> bool {
        match self {
            Self::Connect(_) => true,
            Self::Stream(_, e) => !e.is_reset(),
            Self::Request(_) => false,
        }
    }
}

/// A response's body as it arrives from the node; each data frame read gives its bytes back
/// to the stream's flow-control window.
#[derive(Debug)]
pub struct ResponseBody {
    recv: h2::RecvStream,
    data_done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Releasing what was read lets the node send more.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match std::task::ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// An endpoint as a gRPC transport on its own (the replica probe's): cheap to clone.
#[derive(Debug, Clone)]
pub struct EndpointChannel(pub Arc<Endpoint>);

impl tower_service::Service<http::Request<tonic::body::Body>> for EndpointChannel {
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A call waits for its connection inside its own future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let endpoint = self.0.clone();
        Box::pin(async move {
            endpoint
                .call(request)
                .await
                .map_err(|f| f.error.into_status())
        })
    }
}

impl CallError {
    /// The error as the gRPC client reports it: a failed connection is `UNAVAILABLE` (the
    /// call may be retried); a stream the node reset keeps the code of its reason.
    pub fn into_status(self) -> BoxError {
        if self.is_connection_failure() {
            Box::new(tonic::Status::unavailable(self.to_string()))
        } else {
            Box::new(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        stream_window: 65_535,
        connection_window: 1 << 20,
    };

    /// A bodiless call, as the replica probe makes.
    fn get_region_info() -> http::Request<tonic::body::Body> {
        http::Request::builder()
            .uri("/domicile.v1.RegionalNode/GetRegionInfo")
            .body(tonic::body::Body::empty())
            .unwrap()
    }

    /// An endpoint whose connection is one end of an in-memory pipe; the other end is returned.
    async fn piped() -> (Endpoint, tokio::io::DuplexStream) {
        let endpoint = Endpoint::new("http://node.test:50061", None, SETTINGS).unwrap();
        let (near, far) = tokio::io::duplex(1 << 20);
        let live = endpoint.handshake(near).await.unwrap();
        *endpoint.live.lock().unwrap() = Some(live);
        (endpoint, far)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_peer_stops_answering_pings_is_closed() {
        // The peer reads nothing and answers nothing.
        let (endpoint, _silent) = piped().await;
        assert!(endpoint.is_connected());
        let second = Duration::from_secs(1);
        tokio::time::sleep(KEEPALIVE_EVERY + KEEPALIVE_TIMEOUT - second).await;
        assert!(endpoint.is_connected(), "the ping's answer is not yet late");
        tokio::time::sleep(2 * second).await;
        assert!(
            !endpoint.is_connected(),
            "closed once the ping went unanswered"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_peer_answers_pings_stays_open() {
        let (endpoint, far) = piped().await;
        tokio::spawn(async move {
            let mut server = h2::server::handshake(far).await.unwrap();
            while server.accept().await.is_some() {}
        });
        tokio::time::sleep(5 * (KEEPALIVE_EVERY + KEEPALIVE_TIMEOUT)).await;
        assert!(endpoint.is_connected());
    }

    #[tokio::test]
    async fn a_call_sends_every_chunk_in_order_and_reads_the_answer_with_its_trailers() {
        let (endpoint, far) = piped().await;
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut server = h2::server::handshake(far).await.unwrap();
            let (request, mut respond) = server.accept().await.unwrap().unwrap();
            // The connection is driven by `accept`, in its own task.
            tokio::spawn(async move { while server.accept().await.is_some() {} });
            let (parts, mut body) = request.into_parts();
            let mut received = Vec::new();
            while let Some(data) = body.data().await {
                let data = data.unwrap();
                let _ = body.flow_control().release_capacity(data.len());
                received.extend_from_slice(&data);
            }
            seen_tx.send((parts.uri.clone(), received)).unwrap();
            let mut stream = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            stream
                .send_data(Bytes::from_static(b"answer"), false)
                .unwrap();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            stream.send_trailers(trailers).unwrap();
        });
        // Three chunks, one larger than the node's stream window: flow control paces it.
        let big = Bytes::from(vec![7u8; 200_000]);
        let chunks = vec![
            Bytes::from_static(b"head"),
            big.clone(),
            Bytes::from_static(b"tail"),
        ];
        let frames = chunks
            .clone()
            .into_iter()
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c)));
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let request = http::Request::builder()
            .uri("/domicile.v1.RegionalNode/Ingest")
            .body(body)
            .unwrap();
        let response = endpoint.call(request).await.unwrap();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"answer"));
        assert_eq!(trailers["grpc-status"], "0");
        let (uri, received) = seen_rx.await.unwrap();
        assert_eq!(
            uri,
            "http://node.test:50061/domicile.v1.RegionalNode/Ingest"
        );
        assert_eq!(received, chunks.concat());
        assert!(
            endpoint.is_connected(),
            "the connection stays for the next call"
        );
    }

    #[tokio::test]
    async fn a_failed_connection_is_dropped_and_a_reset_stream_is_not() {
        let (endpoint, far) = piped().await;
        tokio::spawn(async move {
            let mut server = h2::server::handshake(far).await.unwrap();
            // The first stream is refused on its own; then the connection goes away.
            let (_, mut respond) = server.accept().await.unwrap().unwrap();
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            let _second = server.accept().await;
        });
        let refused = endpoint.call(get_region_info()).await.unwrap_err().error;
        assert!(!refused.is_connection_failure(), "{refused}");
        assert!(endpoint.is_connected());
        // The server task ends after the second stream arrives, dropping its end of the pipe.
        let gone = endpoint.call(get_region_info()).await.unwrap_err().error;
        assert!(gone.is_connection_failure(), "{gone}");
        assert!(!endpoint.is_connected(), "the next call will connect again");
        let status = gone.into_status().downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("http://node.test:50061"),
            "{status:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn callers_waiting_on_a_failed_connection_attempt_share_its_error() {
        // A listener that accepts TCP and never speaks: the TLS handshake cannot finish.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        // No handshake gets far enough to need a root.
        let roots = tokio_rustls::rustls::RootCertStore::empty();
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name: ServerName::try_from("node.test").unwrap(),
        };
        let endpoint =
            Arc::new(Endpoint::new(&format!("https://{addr}"), Some(tls), SETTINGS).unwrap());
        let started = tokio::time::Instant::now();
        let calls = (0..8).map(|_| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                endpoint
                    .call(get_region_info())
                    .await
                    .unwrap_err()
                    .error
                    .to_string()
            })
        });
        for error in futures::future::join_all(calls).await {
            let error = error.unwrap();
            assert!(error.contains("no connection within 1000 ms"), "{error}");
        }
        assert_eq!(endpoint.attempts.load(Ordering::Relaxed), 1);
        assert!(
            started.elapsed() < 2 * CONNECT_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_node_sending_oversized_headers_fails_that_call_only() {
        let (endpoint, far) = piped().await;
        tokio::spawn(async move {
            let mut server = h2::server::Builder::new()
                .max_send_buffer_size(1 << 20)
                .handshake::<_, Bytes>(far)
                .await
                .unwrap();
            let mut served = 0;
            while let Some(Ok((_, mut respond))) = server.accept().await {
                let mut response = http::Response::new(());
                if served == 0 {
                    let huge = "x".repeat(MAX_HEADER_LIST_BYTES as usize + 1);
                    response
                        .headers_mut()
                        .insert("x-huge", http::HeaderValue::from_str(&huge).unwrap());
                }
                served += 1;
                let _ = respond.send_response(response, true);
            }
        });
        let refused = endpoint.call(get_region_info()).await.unwrap_err().error;
        assert!(!refused.is_connection_failure(), "{refused}");
        let next = endpoint.call(get_region_info()).await.unwrap();
        assert_eq!(next.status(), http::StatusCode::OK);
    }

    #[test]
    fn urls_must_match_the_federations_tls_settings() {
        for bad in ["node:1", "http://node", "https://node:1", "/path"] {
            assert!(Endpoint::new(bad, None, SETTINGS).is_err(), "{bad}");
        }
        assert!(Endpoint::new("http://10.0.1.10:50061", None, SETTINGS).is_ok());
    }
}
