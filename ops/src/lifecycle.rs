//! Graceful shutdown: stop advertising, stop accepting, let the calls in flight finish.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::{server::NamedService, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

/// How a listener drains when asked to stop.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// How long health reports `NOT_SERVING` while the listener still accepts calls, so that
    /// load balancers and Kubernetes readiness probes take the instance out first.
    pub grace: Duration,
    /// The longest wait for calls in flight once the listener stops accepting; calls still
    /// running then are cut.
    pub timeout: Duration,
}

/// Runs `server` (a tonic server future that stops accepting when the future it is given
/// completes, then waits for its calls) until `shutdown` completes, then drains it:
/// `not_serving` runs first (set health to `NOT_SERVING`), the listener keeps accepting for
/// `drain.grace`, then stops accepting and gets at most `drain.timeout` to finish its calls.
pub async fn serve_and_drain<S, E, N>(
    server: impl FnOnce(Stop) -> S,
    shutdown: impl Future<Output = ()>,
    drain: Drain,
    not_serving: N,
) -> Result<(), E>
where
    S: Future<Output = Result<(), E>>,
    N: Future<Output = ()>,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server(Box::pin(async {
        let _ = stopped.await;
    }));
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = shutdown => {}
    }
    tracing::info!(
        grace_ms = drain.grace.as_millis() as u64,
        timeout_ms = drain.timeout.as_millis() as u64,
        "shutting down: draining"
    );
    not_serving.await;
    tokio::select! {
        result = &mut server => return result,
        () = tokio::time::sleep(drain.grace) => {}
    }
    let _ = stop.send(());
    match tokio::time::timeout(drain.timeout, server).await {
        Ok(result) => {
            tracing::info!("drained");
            result
        }
        Err(_) => {
            tracing::warn!("drain timeout: calls still in flight were cut");
            Ok(())
        }
    }
}

/// Completes when a draining server must stop accepting.
pub type Stop = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A listener's connections for tonic, with `TCP_NODELAY`: small gRPC frames must not wait for
/// Nagle's algorithm (40 ms with delayed ACKs).
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Reports `S` and the whole server (the empty service name, which Kubernetes probes) as
/// `NOT_SERVING`.
pub async fn not_serving<S: NamedService>(health: &HealthReporter) {
    health.set_not_serving::<S>().await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what Kubernetes and systemd send).
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_grace_then_stops_and_waits_for_calls() {
        let marked = Arc::new(AtomicBool::new(false));
        let m = marked.clone();
        let started = tokio::time::Instant::now();
        let result: Result<(), ()> = serve_and_drain(
            |stop| async move {
                stop.await;
                // A call in flight that needs 2 s more.
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(())
            },
            tokio::time::sleep(Duration::from_secs(1)),
            Drain {
                grace: Duration::from_secs(5),
                timeout: Duration::from_secs(30),
            },
            async move { m.store(true, Ordering::SeqCst) },
        )
        .await;
        assert_eq!(result, Ok(()));
        assert!(marked.load(Ordering::SeqCst));
        assert_eq!(started.elapsed(), Duration::from_secs(1 + 5 + 2));
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_calls_at_the_timeout() {
        let started = tokio::time::Instant::now();
        let result: Result<(), ()> = serve_and_drain(
            |_stop| std::future::pending(),
            async {},
            Drain {
                grace: Duration::ZERO,
                timeout: Duration::from_secs(3),
            },
            async {},
        )
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
