//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the `traceparent` header that
//! ties a caller's trace, the gateway's span and every region call into one trace.
//!
//! The gateway continues a caller's trace (or starts one), and each call to a region carries a
//! child `traceparent`; the node continues it. The context of the call being served lives in a
//! task-local ([`current`]); spawned tasks carry it explicitly with [`scope`].

use std::{fmt, future::Future};

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

/// The context of one span: trace id, span id and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Random bytes for an id, from the thread's CSPRNG (`rand::rng()`: ChaCha seeded from the
/// operating system and reseeded as it goes) rather than a system call per id: a call through
/// the gateway draws three ids, a fan-out one more per region.
fn random<const N: usize>() -> [u8; N] {
    use rand::Rng as _;
    let mut b = [0u8; N];
    let mut rng = rand::rng();
    // All-zero ids are invalid: redraw (probability 2^-64 at worst).
    while b.iter().all(|&x| x == 0) {
        rng.fill(&mut b);
    }
    b
}

fn hex_into<const N: usize>(s: &str) -> Option<[u8; N]> {
    // Only lower-case hex is valid in version 00.
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl TraceContext {
    /// A new trace with a fresh span, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: random(),
            span_id: random(),
            flags: 1,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: random(),
            ..*self
        }
    }

    /// Parses a `traceparent` value. Version 00 must be exactly 55 characters; a later version
    /// is read by its first four fields, as the specification asks. Invalid values (all-zero
    /// ids, upper-case hex, version ff) give `None`, and the caller starts a new trace.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = std::str::from_utf8(value).ok()?;
        if value.len() < 55 || !value.is_char_boundary(55) {
            return None;
        }
        let mut parts = value[..55].split('-');
        let version = hex_into::<1>(parts.next()?)?[0];
        let trace_id = hex_into::<16>(parts.next()?)?;
        let span_id = hex_into::<8>(parts.next()?)?;
        let flags = hex_into::<1>(parts.next()?)?[0];
        let rest = &value[55..];
        let valid_rest = match version {
            0 => rest.is_empty(),
            0xff => false,
            _ => rest.is_empty() || rest.starts_with('-'),
        };
        if !valid_rest || trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The trace id as 32 lower-case hex characters.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The span id as 16 lower-case hex characters.
    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value (version 00).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

/// The context of the call being served on this task, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// Runs `fut` with `context` as the current trace context (also across a `tokio::spawn`: wrap
/// the spawned future). `None` runs it as is.
pub async fn scope<F: Future>(context: Option<TraceContext>, fut: F) -> F::Output {
    match context {
        Some(c) => CURRENT.scope(c, fut).await,
        None => fut.await,
    }
}

/// `fut` carrying the current trace context, principal and `tracing` span, for `tokio::spawn` and
/// `JoinSet::spawn`: a spawned task starts with neither.
pub fn carried<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    crate::principal::scope(crate::principal::current(), scope(current(), fut))
        .instrument(tracing::Span::current())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example_and_writes_it_back() {
        let c = TraceContext::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(c.flags, 1);
        assert_eq!(c.to_string(), EXAMPLE);
    }

    #[test]
    fn refuses_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_known_fields() {
        let v = format!("01{}-what-comes-next", &EXAMPLE[2..]);
        let c = TraceContext::parse(v.as_bytes()).unwrap();
        assert_eq!(c.span_id_hex(), "00f067aa0ba902b7");
    }

    #[test]
    fn ids_never_repeat_across_calls_or_threads() {
        // Each thread's generator is seeded from the operating system: one fixed seed, or a
        // seed shared by threads, would repeat ids here.
        let draw = || {
            (0..1_000)
                .map(|_| TraceContext::new_root().trace_id)
                .collect::<Vec<_>>()
        };
        let mut seen = std::collections::HashSet::new();
        for id in draw()
            .into_iter()
            .chain(std::thread::spawn(draw).join().unwrap())
        {
            assert!(seen.insert(id), "{} drawn twice", hex::encode(id));
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(root.trace_id, child.trace_id);
        assert_ne!(root.span_id, child.span_id);
        assert_eq!(
            TraceContext::parse(child.to_string().as_bytes()),
            Some(child)
        );
    }

    #[tokio::test]
    async fn the_current_context_follows_the_scope() {
        assert_eq!(current(), None);
        let c = TraceContext::new_root();
        let seen = scope(Some(c), async {
            tokio::spawn(carried(async { current() })).await
        })
        .await
        .unwrap();
        assert_eq!(seen, Some(c));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = TraceContext::parse(&bytes);
        }

        #[test]
        fn round_trips(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), flags in any::<u8>()) {
            prop_assume!(trace != [0; 16] && span != [0; 8]);
            let c = TraceContext { trace_id: trace, span_id: span, flags };
            prop_assert_eq!(TraceContext::parse(c.to_string().as_bytes()), Some(c));
        }
    }
}
