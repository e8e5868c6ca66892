//! Who a call acts for: the authenticated principal, carried from the gateway to the nodes so
//! that every audit entry names the person or service that caused it.
//!
//! The gateway authenticates the caller (token `sub` or client certificate) and runs the call
//! with that principal as [`current`]; its channels to the regions send it in the
//! [`HEADER`] header ([`crate::rpc::Instrumented`]). A node trusts the header only on its
//! federation listener, where mutual TLS pins the gateway's identity
//! ([`crate::rpc::RpcLayer::trusting_principal`]); elsewhere it is ignored. It is an
//! attribution, not an authority: what a request may do is decided by its own checks (tenant,
//! purpose, the DPO's signature).
//!
//! Like the trace context, the principal lives in a task-local; [`crate::trace::carried`]
//! carries it into spawned tasks, and [`sync_scope`] into blocking closures.

use std::{future::Future, sync::Arc};

use sha2::{Digest, Sha256};

/// The header that carries the principal from the gateway to a node.
pub const HEADER: &str = "x-domicile-principal";

/// Longest principal kept as given; longer ones are replaced by their hash.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// The principal of the call being served on this task, if any.
pub fn current() -> Option<Arc<str>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs `fut` with `principal` as [`current`]; `None` runs it as is.
pub async fn scope<F: Future>(principal: Option<Arc<str>>, fut: F) -> F::Output {
    match principal {
        Some(p) => CURRENT.scope(p, fut).await,
        None => fut.await,
    }
}

/// Runs the blocking `f` with `principal` as [`current`]; `None` runs it as is.
pub fn sync_scope<R>(principal: Option<Arc<str>>, f: impl FnOnce() -> R) -> R {
    match principal {
        Some(p) => CURRENT.sync_scope(p, f),
        None => f(),
    }
}

/// A principal fit for a header, a log field and an audit entry: printable ASCII without
/// spaces, at most 128 characters; anything else becomes `sha256:` and the hex of its hash (so
/// it stays stable and attributable without carrying arbitrary bytes).
pub fn sanitize(raw: &str) -> String {
    let clean =
        !raw.is_empty() && raw.len() <= MAX_LEN && raw.bytes().all(|b| b.is_ascii_graphic());
    if clean {
        raw.to_owned()
    } else {
        format!(
            "sha256:{}",
            hex::encode(&Sha256::digest(raw.as_bytes())[..16])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_principal_follows_its_scope_into_blocking_code() {
        assert_eq!(current(), None);
        let seen = scope(Some("sub:alice".into()), async {
            let p = current();
            tokio::task::spawn_blocking(move || sync_scope(p, current))
                .await
                .unwrap()
        })
        .await;
        assert_eq!(seen.as_deref(), Some("sub:alice"));
        assert_eq!(current(), None);
    }

    #[test]
    fn odd_principals_are_hashed() {
        assert_eq!(sanitize("sub:svc-1"), "sub:svc-1");
        for odd in ["", "a b", "é", &"x".repeat(129), "line\nbreak"] {
            let s = sanitize(odd);
            assert!(s.starts_with("sha256:") && s.len() == 39, "{odd:?} → {s}");
        }
    }
}
