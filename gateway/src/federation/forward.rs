//! `RegionalNode.Ingest` requests framed without copying their ciphertexts.
//!
//! A sealed batch is the largest thing the gateway forwards (up to `max_message_bytes`), and
//! nearly all of it is ciphertext the gateway cannot read. The ciphertexts it decoded are
//! slices of the buffer tonic read the caller's message into; encoding the node's request
//! through a codec would copy every one of them into a second buffer of the same size, held
//! until the node has read it. [`ingest_frame`] writes the node's request as a list of chunks
//! instead: the protobuf fields around each ciphertext go into small buffers, and a large
//! ciphertext is its own chunk, the same slice of the caller's buffer. Forwarding an 8 MiB
//! batch then holds one copy of it, not two.
//!
//! The frame rides in the request's extensions through tonic's client (which still does the
//! deadline, the status, the response's decoding and the metrics; see
//! [`Region::ingest`](crate::federation::directory::Region::ingest)), and
//! [`Replicas`](crate::federation::replicas::Replicas) puts it in place of the empty message
//! tonic encoded. This module depends on no other of the federation's: both of those use it.

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};
use domicile_proto::pb::{RegionalNodeIngestRequest, SealedEnvelope};
use http_body::Frame;
use http_body_util::StreamBody;
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len},
};
use tonic::body::Body;

/// `RegionalNodeIngestRequest.envelope`.
const REQUEST_ENVELOPE: u32 = 2;
/// `SealedEnvelope.records`.
const ENVELOPE_RECORDS: u32 = 4;
/// `SealedRecord.ciphertext`.
const RECORD_CIPHERTEXT: u32 = 5;

/// A ciphertext at least this long is sent as a chunk of its own (shared, not copied); a
/// shorter one is copied into the buffer around it, so that a batch of many small records is
/// a few large DATA frames rather than one per record.
pub const SHARED_FROM: usize = 2 * 1024;

/// A gRPC request body already framed (length prefix and message) as a list of chunks.
#[derive(Debug, Clone, Default)]
pub struct PreEncoded {
    chunks: Vec<Bytes>,
}

impl PreEncoded {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.chunks.push(chunk);
        }
    }

    /// The chunks, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The frame as a request body, one DATA frame per chunk.
    pub fn into_body(self) -> Body {
        let frames = self
            .chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(Frame::data(c)));
        Body::new(StreamBody::new(futures::stream::iter(frames)))
    }
}

/// Why a request could not be framed.
#[derive(Debug, thiserror::Error)]
#[error("the request to the region is {0} bytes, over gRPC's 4 GiB frame")]
pub struct TooLarge(usize);

/// The gRPC frame of `RegionalNodeIngestRequest { tenant_id, envelope }`, byte for byte the
/// message prost would encode up to the order of fields (each record's ciphertext comes last
/// in its record, which protobuf parsers accept: fields may come in any order).
pub fn ingest_frame(tenant_id: &str, mut envelope: SealedEnvelope) -> Result<PreEncoded, TooLarge> {
    let mut records = std::mem::take(&mut envelope.records);
    let ciphertexts: Vec<Bytes> = records
        .iter_mut()
        .map(|r| std::mem::take(&mut r.ciphertext))
        .collect();
    let field = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
    let record_lens: Vec<usize> = records
        .iter()
        .zip(&ciphertexts)
        .map(|(r, c)| {
            r.encoded_len()
                + if c.is_empty() {
                    0
                } else {
                    field(RECORD_CIPHERTEXT, c.len())
                }
        })
        .collect();
    let envelope_len = envelope.encoded_len()
        + record_lens
            .iter()
            .map(|&l| field(ENVELOPE_RECORDS, l))
            .sum::<usize>();
    let head = RegionalNodeIngestRequest {
        tenant_id: tenant_id.to_owned(),
        envelope: None,
    };
    let message_len = head.encoded_len() + field(REQUEST_ENVELOPE, envelope_len);
    let prefix = u32::try_from(message_len).map_err(|_| TooLarge(message_len))?;

    let mut frame = PreEncoded::default();
    let shared: usize = ciphertexts
        .iter()
        .map(Bytes::len)
        .filter(|&l| l >= SHARED_FROM)
        .sum();
    let mut buf = BytesMut::with_capacity((5 + message_len - shared).min(1 << 20));
    buf.put_u8(0); // not compressed
    buf.put_u32(prefix);
    // Encoding into a `BytesMut` cannot fail: it grows as needed.
    head.encode_raw(&mut buf);
    encode_key(REQUEST_ENVELOPE, WireType::LengthDelimited, &mut buf);
    encode_varint(envelope_len as u64, &mut buf);
    envelope.encode_raw(&mut buf);
    for ((record, ciphertext), len) in records.iter().zip(ciphertexts).zip(record_lens) {
        encode_key(ENVELOPE_RECORDS, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        record.encode_raw(&mut buf);
        if ciphertext.is_empty() {
            continue;
        }
        encode_key(RECORD_CIPHERTEXT, WireType::LengthDelimited, &mut buf);
        encode_varint(ciphertext.len() as u64, &mut buf);
        if ciphertext.len() < SHARED_FROM {
            buf.put_slice(&ciphertext);
        } else {
            frame.push(buf.split().freeze());
            frame.push(ciphertext);
        }
    }
    frame.push(buf.freeze());
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use domicile_proto::pb::{RecordKind, SealedRecord};

    use super::*;

    fn record(seq: u32, ciphertext: Bytes) -> SealedRecord {
        SealedRecord {
            seq,
            idempotency_key: format!("key-{seq}"),
            country: "DE".to_owned(),
            kind: RecordKind::Interaction as i32,
            ciphertext,
        }
    }

    fn envelope(records: Vec<SealedRecord>) -> SealedEnvelope {
        SealedEnvelope {
            region_id: "eu-central".to_owned(),
            key_id: "k1".to_owned(),
            encapsulated_key: vec![7; 32],
            records,
        }
    }

    /// The frame read back: its prefix, and the message decoded by prost.
    fn read_back(frame: &PreEncoded) -> (u8, u32, RegionalNodeIngestRequest) {
        let all = frame.chunks().concat();
        let len = u32::from_be_bytes(all[1..5].try_into().unwrap());
        assert_eq!(
            len as usize,
            all.len() - 5,
            "the prefix is the message's length"
        );
        let message = RegionalNodeIngestRequest::decode(&all[5..]).expect("prost reads it");
        (all[0], len, message)
    }

    #[test]
    fn the_frame_decodes_to_the_message_it_was_made_from() {
        let big = Bytes::from(vec![0xAB; 3 * SHARED_FROM + 5]);
        let cases = [
            envelope(Vec::new()),
            envelope(vec![record(0, Bytes::new())]),
            envelope(
                (0..50)
                    .map(|i| record(i, vec![i as u8; 300].into()))
                    .collect(),
            ),
            envelope(vec![
                record(0, vec![1; 10].into()),
                record(1, big.clone()),
                record(2, Bytes::new()),
                record(3, big.slice(7..SHARED_FROM + 7)),
                record(4, vec![2; SHARED_FROM - 1].into()),
            ]),
            SealedEnvelope::default(),
        ];
        for tenant in ["acme", ""] {
            for env in &cases {
                let expected = RegionalNodeIngestRequest {
                    tenant_id: tenant.to_owned(),
                    envelope: Some(env.clone()),
                };
                let frame = ingest_frame(tenant, env.clone()).unwrap();
                let (compressed, len, message) = read_back(&frame);
                assert_eq!(compressed, 0);
                assert_eq!(message, expected);
                assert_eq!(
                    len as usize,
                    expected.encoded_len(),
                    "same length as prost's"
                );
            }
        }
    }

    #[test]
    fn large_ciphertexts_are_shared_not_copied() {
        let big = Bytes::from(vec![0xCD; 1 << 20]);
        let frame = ingest_frame(
            "acme",
            envelope(vec![
                record(0, vec![1; 100].into()),
                record(1, big.clone()),
                record(2, big.slice(10..SHARED_FROM + 10)),
            ]),
        )
        .unwrap();
        let pointers: Vec<*const u8> = frame.chunks().iter().map(|c| c.as_ptr()).collect();
        assert!(
            pointers.contains(&big.as_ptr()),
            "the 1 MiB ciphertext is the caller's"
        );
        assert!(pointers.contains(&big[10..].as_ptr()));
        let copied: usize = frame
            .chunks()
            .iter()
            .filter(|c| !std::ptr::eq(c.as_ptr(), big.as_ptr()) && c.len() != SHARED_FROM)
            .map(Bytes::len)
            .sum();
        assert!(
            copied < 1024,
            "only the fields around them are written: {copied} bytes"
        );
    }

    #[test]
    fn the_body_yields_its_chunks_in_order() {
        use http_body_util::BodyExt;
        let big = Bytes::from(vec![3; 2 * SHARED_FROM]);
        let frame = ingest_frame(
            "acme",
            envelope(vec![record(0, big), record(1, vec![4; 9].into())]),
        )
        .unwrap();
        let expected = frame.chunks().concat();
        assert_eq!(
            frame.chunks().len(),
            3,
            "head, the shared ciphertext, the rest"
        );
        let collected = futures::executor::block_on(frame.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(collected, expected);
    }
}
