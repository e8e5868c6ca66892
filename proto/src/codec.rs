//! The gRPC codec of every Domicile service: prost's, except that a request body that does not
//! decode (truncated or malformed protobuf, a string field that is not UTF-8) is the caller's
//! error — `INVALID_ARGUMENT`, naming the field prost stopped at — not `INTERNAL`.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use crate::error::Violations;

/// prost's encoding, with decode failures answered as bad input.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decodes with prost; see [`StrictCodec`].
#[derive(Debug, Clone)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| undecodable(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// `INVALID_ARGUMENT` for a body that does not decode, with the field path prost reports
/// (`Message.field: Inner.field: reason` becomes `field.field`). prost's reasons name types
/// and wire details, never a value.
pub fn undecodable(e: &prost::DecodeError) -> Status {
    let text = e.to_string();
    let field = text
        .split(": ")
        .filter_map(|part| {
            let (message, field) = part.split_once('.')?;
            let word =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (word(message) && word(field)).then_some(field)
        })
        .collect::<Vec<_>>()
        .join(".");
    let reason = text.rsplit(": ").next().unwrap_or("malformed").to_owned();
    let field = if field.is_empty() {
        "(message)".to_owned()
    } else {
        field
    };
    Violations::one(field, format!("does not decode as protobuf: {reason}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{error::field_violations, pb::AggregateRequest};

    #[test]
    fn bad_bytes_are_invalid_argument_naming_the_field() {
        // Field 1 (tenant_id), length-delimited, 2 bytes that are not UTF-8.
        let e = AggregateRequest::decode(&[0x0a, 0x02, 0xff, 0xfe][..]).unwrap_err();
        let status = undecodable(&e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].field, "tenant_id");
        // A truncated body: no field to name.
        let e = AggregateRequest::decode(&[0x0a, 0x05, b'a'][..]).unwrap_err();
        let status = undecodable(&e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("does not decode"),
            "{}",
            status.message()
        );
    }
}
