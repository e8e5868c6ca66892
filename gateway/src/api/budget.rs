//! The request-bytes budget: an admitted call reserves its message's size from a budget shared
//! by every call before its body is read, and keeps it until its response ends.
//!
//! A gRPC message starts with five bytes: a compression flag and its length. [`Budgeted`]
//! reads them and takes that many permits of the budget (one per byte, at most the whole
//! budget) before it lets the body through. A call that does not fit is refused at once with
//! `UNAVAILABLE`, having read one HTTP/2 frame of its body: like the load shedding of
//! [`crate::limits`], the caller retries with backoff. It does not wait, because a call waiting
//! with its body unread keeps its bytes in the connection's HTTP/2 window, and enough of them
//! stop the bytes of the calls that hold the budget from arriving: they would wait for each
//! other for ever (the first version waited, and `domicile-bench flood` hung on it). The
//! request (the bytes tonic buffers, the decoded message, the copy encoded for a region) lives
//! until the response is answered, so the reservation is handed to the response
//! ([`Reservation`]).
//!
//! What passes unreserved: a message of at most [`UNRESERVED`] bytes, and one that declares more
//! than `limits.max_message_bytes`, which tonic refuses as soon as it reads the length. A body that carries more than the one message
//! it declared is cut with `INVALID_ARGUMENT` (the `Gateway` API has no client-streaming call).
//!
//! Left alone: a caller that declares a large message and then sends it slowly holds its
//! reservation until its deadline; the per-tenant concurrency limit bounds how much of the
//! budget one tenant can hold that way. A message larger than the budget is accepted only
//! when no other call holds any of it, so under steady traffic it may be refused again and
//! again: the budget should be several times the largest batch callers send.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// A gRPC message's prefix: a compression flag and a big-endian 32-bit length.
const PREFIX: usize = 5;

/// Messages up to this size take nothing from the budget: the calls that make up most traffic
/// (a contact check is about 100 bytes) never wait on it nor keep a large message from it.
/// What they hold is bounded by `limits.max_in_flight` calls of this size.
pub const UNRESERVED: u64 = 64 * 1024;

/// A call's share of the budget, shared by its request body (which takes it) and its
/// response (which keeps it until it ends).
#[derive(Debug, Clone, Default)]
pub struct Reservation(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Reservation {
    /// Bytes reserved so far.
    pub fn bytes(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn hold(&self, permit: OwnedSemaphorePermit) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
    }
}

/// A request body that passes nothing until its message's size is reserved.
pub struct Budgeted {
    body: tonic::body::Body,
    budget: Arc<Semaphore>,
    total: u32,
    max_message: usize,
    reservation: Reservation,
    /// The message's first bytes, until the prefix is complete.
    prefix: Vec<u8>,
    /// Frames read before the reservation, in order.
    held: VecDeque<Bytes>,
    /// The budget could not take the message.
    refused: bool,
    /// Bytes the body may still pass, once the prefix is read; `None` before.
    allowed: Option<u64>,
}

impl std::fmt::Debug for Budgeted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgeted")
            .field("total", &self.total)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Budgeted {
    /// Wraps `body`, to reserve from `budget` (of `total` bytes) into `reservation`; a message
    /// declared larger than `max_message` is not reserved (tonic refuses it unread).
    pub fn new(
        body: tonic::body::Body,
        (budget, total): (Arc<Semaphore>, u32),
        max_message: usize,
        reservation: Reservation,
    ) -> Self {
        Self {
            body,
            budget,
            total,
            max_message,
            reservation,
            prefix: Vec::with_capacity(PREFIX),
            held: VecDeque::new(),
            refused: false,
            allowed: None,
        }
    }

    /// The prefix is complete: takes the reservation, or marks the call refused (a size tonic
    /// refuses passes unreserved).
    fn reserve(&mut self) {
        let declared = u32::from_be_bytes([
            self.prefix[1],
            self.prefix[2],
            self.prefix[3],
            self.prefix[4],
        ]) as u64;
        let whole = declared + PREFIX as u64;
        self.allowed = Some(whole);
        if whole <= UNRESERVED || declared > self.max_message as u64 {
            // Small; or tonic answers OUT_OF_RANGE from the prefix alone, and nothing will be
            // buffered.
            return;
        }
        let permits = whole.min(u64::from(self.total)) as u32;
        match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => self.reservation.hold(permit),
            Err(_) => self.refused = true,
        }
    }

    /// Passes `chunk` if the message's declared size still allows it.
    fn pass(&mut self, chunk: Bytes) -> Result<Frame<Bytes>, Status> {
        let allowed = self.allowed.as_mut().expect("passing only once reserved");
        let len = chunk.len() as u64;
        if len > *allowed {
            return Err(Status::invalid_argument(
                "request: more bytes than the one message it declares",
            ));
        }
        *allowed -= len;
        Ok(Frame::data(chunk))
    }
}

impl Body for Budgeted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if this.refused {
                this.held.clear();
                return Poll::Ready(Some(Err(Status::unavailable(
                    "the gateway holds as many request bytes as it may; retry with backoff",
                ))));
            }
            if this.allowed.is_some()
                && let Some(chunk) = this.held.pop_front()
            {
                return Poll::Ready(Some(this.pass(chunk)));
            }
            let frame = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                None => {
                    // A body shorter than a prefix: tonic refuses it; nothing to reserve.
                    if let Some(chunk) = this.held.pop_front() {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => frame,
            };
            let chunk = match frame.into_data() {
                Ok(chunk) => chunk,
                // Trailers from a client: nothing to reserve.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            if this.allowed.is_some() {
                return Poll::Ready(Some(this.pass(chunk)));
            }
            let need = PREFIX - this.prefix.len();
            this.prefix
                .extend_from_slice(&chunk.chunk()[..need.min(chunk.len())]);
            this.held.push_back(chunk);
            if this.prefix.len() == PREFIX {
                this.reserve();
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt, channel::mpsc};
    use http_body_util::{BodyExt, StreamBody};
    use tonic::Code;

    use super::*;

    type Sender = mpsc::Sender<Result<Frame<Bytes>, Status>>;

    fn body() -> (Sender, tonic::body::Body) {
        let (tx, rx) = mpsc::channel(16);
        (tx, tonic::body::Body::new(StreamBody::new(rx)))
    }

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&len.to_be_bytes());
        m.resize(PREFIX + len as usize, 0x5a);
        m
    }

    fn poll(b: &mut Budgeted) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let waker = futures::task::noop_waker();
        Pin::new(b).poll_frame(&mut Context::from_waker(&waker))
    }

    async fn read_all(b: Budgeted) -> Result<Vec<u8>, Status> {
        Ok(b.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_call_that_does_not_fit_is_refused_unread_until_the_first_ends() {
        let budget = (Arc::new(Semaphore::new(1_000_000)), 1_000_000);
        let m = message(600_000);
        let (mut tx, b) = body();
        let r1 = Reservation::default();
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(&m[..3]))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(&m[3..]))))
            .await
            .unwrap();
        drop(tx);
        let got = read_all(Budgeted::new(b, budget.clone(), 10_000_000, r1.clone()))
            .await
            .unwrap();
        assert_eq!(got, m, "split prefix, nothing lost or reordered");
        assert_eq!(r1.bytes(), 600_005);
        assert_eq!(budget.0.available_permits(), 399_995);

        // 600,005 more do not fit: refused from its first frame, the rest never read.
        let (mut tx, b) = body();
        let r2 = Reservation::default();
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(&m[..100]))))
            .await
            .unwrap();
        let mut second = Budgeted::new(b, budget.clone(), 10_000_000, r2.clone());
        match poll(&mut second) {
            Poll::Ready(Some(Err(status))) => assert_eq!(status.code(), Code::Unavailable),
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        }
        assert_eq!(r2.bytes(), 0);
        assert_eq!(
            budget.0.available_permits(),
            399_995,
            "a refusal takes nothing"
        );

        // The first call's response ends: its reservation goes back, and the same call fits.
        drop(r1);
        assert_eq!(budget.0.available_permits(), 1_000_000);
        let (mut tx, b) = body();
        let r3 = Reservation::default();
        tx.send(Ok(Frame::data(Bytes::from(m.clone()))))
            .await
            .unwrap();
        drop(tx);
        let got = read_all(Budgeted::new(b, budget.clone(), 10_000_000, r3.clone()))
            .await
            .unwrap();
        assert_eq!(got, m);
        assert_eq!(r3.bytes(), 600_005);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_runs_alone_and_small_or_refused_ones_pass_unreserved()
    {
        let budget = (Arc::new(Semaphore::new(1_000_000)), 1_000_000);
        let (mut tx, b) = body();
        let r = Reservation::default();
        let big = message(5_000_000);
        tx.send(Ok(Frame::data(Bytes::from(big.clone()))))
            .await
            .unwrap();
        drop(tx);
        let got = read_all(Budgeted::new(b, budget.clone(), 10_000_000, r.clone()))
            .await
            .unwrap();
        assert_eq!(got.len(), big.len());
        assert_eq!(r.bytes(), 1_000_000, "the whole budget, not more");
        assert_eq!(budget.0.available_permits(), 0);

        // Declared over max_message: passed through at once, nothing reserved, even with the
        // budget all taken.
        let (mut tx, b) = body();
        let r2 = Reservation::default();
        let mut over = vec![0u8];
        over.extend_from_slice(&20_000_000u32.to_be_bytes());
        over.resize(64, 0x5a);
        tx.send(Ok(Frame::data(Bytes::from(over)))).await.unwrap();
        let mut over = Budgeted::new(b, budget.clone(), 10_000_000, r2.clone());
        assert!(matches!(poll(&mut over), Poll::Ready(Some(Ok(_)))));
        assert_eq!(r2.bytes(), 0);

        // A small message needs none of it either.
        let (mut tx, b) = body();
        let r3 = Reservation::default();
        let small = message(UNRESERVED as u32 - 5);
        tx.send(Ok(Frame::data(Bytes::from(small.clone()))))
            .await
            .unwrap();
        drop(tx);
        let got = read_all(Budgeted::new(b, budget, 10_000_000, r3.clone()))
            .await
            .unwrap();
        assert_eq!(got, small);
        assert_eq!(r3.bytes(), 0);
    }

    #[tokio::test]
    async fn bytes_beyond_the_declared_message_are_refused() {
        let budget = (Arc::new(Semaphore::new(1_000_000)), 1_000_000);
        let (mut tx, b) = body();
        let mut two = message(100_000);
        two.extend(message(10));
        tx.send(Ok(Frame::data(Bytes::from(two)))).await.unwrap();
        drop(tx);
        let err = read_all(Budgeted::new(b, budget, 10_000_000, Reservation::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_body_shorter_than_a_prefix_passes_as_it_is() {
        let budget = (Arc::new(Semaphore::new(1_000_000)), 1_000_000);
        let (mut tx, b) = body();
        tx.send(Ok(Frame::data(Bytes::from_static(&[0, 0]))))
            .await
            .unwrap();
        drop(tx);
        let got = read_all(Budgeted::new(b, budget, 10_000_000, Reservation::default()))
            .await
            .unwrap();
        assert_eq!(got, vec![0, 0]);
    }
}
