//! Filter fields weir does not know are refused, not ignored. Protobuf drops a field its reader
//! does not declare, so a Hubble client newer than the release weir targets (a `FlowFilter` field
//! added after it) would have its filter silently widened to every flow. The observer's codec
//! ([`StrictCodec`], wired in by build.rs) reads a `GetFlowsRequest`'s filters on the wire
//! before decoding it and refuses, with `InvalidArgument` naming the field's number, any
//! `FlowFilter` field that is not one of the targeted release's ([`super::hubble_api`]; weir's
//! proto declares all of them, and refuses by name those it cannot evaluate). Other messages
//! decode as prost decodes them.
use std::marker::PhantomData;

use prost::{bytes::Buf as _, Message};
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    Status,
};

use super::grpc::proto::observer;

/// Whether `number` is a `FlowFilter` field of the Hubble release weir targets.
pub fn known_filter_field(number: u32) -> bool {
    super::hubble_api::MESSAGES
        .iter()
        .find(|(m, _)| *m == "flow.FlowFilter")
        .is_some_and(|(_, fields)| fields.iter().any(|(_, n, _)| *n == number))
}

/// What a message must pass on the wire before it is decoded.
pub trait Strict {
    fn check(_wire: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

impl Strict for observer::GetFlowsRequest {
    fn check(wire: &[u8]) -> Result<(), String> {
        for (field, value) in fields(wire)? {
            // blacklist (5) and whitelist (6): FlowFilters.
            if let (5 | 6, Value::Bytes(filter)) = (field, value) {
                let list = if field == 5 { "blacklist" } else { "whitelist" };
                for (f, _) in fields(filter)? {
                    if !known_filter_field(f) {
                        return Err(format!(
                            "{list}: FlowFilter field number {f} is not one weir knows (it targets Hubble \
                             {}'s filters); refused rather than ignored",
                            super::hubble_api::HUBBLE_VERSION
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Strict for observer::GetFlowsResponse {}
impl Strict for observer::ServerStatusRequest {}
impl Strict for observer::ServerStatusResponse {}
impl Strict for observer::GetNodesRequest {}
impl Strict for observer::GetNodesResponse {}
impl Strict for observer::GetNamespacesRequest {}
impl Strict for observer::GetNamespacesResponse {}

enum Value<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

fn varint(wire: &mut &[u8]) -> Result<u64, String> {
    prost::encoding::decode_varint(wire).map_err(|e| format!("malformed request: {e}"))
}

/// The fields of one message on the wire: (number, value); a malformed message is an error.
fn fields(mut wire: &[u8]) -> Result<Vec<(u32, Value<'_>)>, String> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let key = varint(&mut wire)?;
        let (number, kind) = ((key >> 3) as u32, key & 7);
        let value = match kind {
            0 => varint(&mut wire).map(|_| Value::Scalar)?,
            1 | 5 => {
                let n = if kind == 1 { 8 } else { 4 };
                if wire.len() < n {
                    return Err("malformed request: a fixed-size field cut short".into());
                }
                wire.advance(n);
                Value::Scalar
            }
            2 => {
                let n = usize::try_from(varint(&mut wire)?).map_err(|_| "malformed request: a length".to_string())?;
                if wire.len() < n {
                    return Err("malformed request: a field longer than the message".into());
                }
                let (bytes, rest) = wire.split_at(n);
                wire = rest;
                Value::Bytes(bytes)
            }
            _ => return Err(format!("malformed request: wire type {kind}")),
        };
        out.push((number, value));
    }
    Ok(out)
}

/// prost's codec, with [`Strict::check`] before every decode.
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Strict + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default + Strict> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        U::check(&bytes).map_err(Status::invalid_argument)?;
        U::decode(bytes).map(Some).map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::observe::grpc::proto::flow::FlowFilter;

    #[test]
    fn an_unknown_filter_field_is_refused_by_number_and_known_ones_pass() {
        let known = observer::GetFlowsRequest {
            number: 5,
            whitelist: vec![FlowFilter { source_pod: vec!["shop/".into()], verdict: vec![2], ..Default::default() }],
            blacklist: vec![FlowFilter { reply: vec![true], ..Default::default() }],
            ..Default::default()
        };
        let wire = known.encode_to_vec();
        assert!(observer::GetFlowsRequest::check(&wire).is_ok());
        // A whitelist filter carrying field 41 (one after the targeted release's), as a newer
        // client would send it.
        let mut filter = FlowFilter { source_pod: vec!["shop/".into()], ..Default::default() }.encode_to_vec();
        filter.extend([0xc8, 0x02, 0x85, 0x01]); // field 41 (key 328, a two-byte varint), varint 133
        let mut wire = vec![1 << 3, 5]; // number: 5
        wire.push(6 << 3 | 2);
        wire.push(filter.len() as u8);
        wire.extend(&filter);
        let e = observer::GetFlowsRequest::check(&wire).expect_err("refused");
        assert!(e.contains("whitelist") && e.contains("number 41") && e.contains("1.19.4"), "{e}");
        // Prost alone would have dropped it and matched every flow of the pod.
        assert!(observer::GetFlowsRequest::decode(&wire[..]).is_ok());
        // Fields weir does not know outside the filters (a field mask, 10) pass.
        let mut wire = known.encode_to_vec();
        wire.extend([10 << 3 | 2, 0]);
        assert!(observer::GetFlowsRequest::check(&wire).is_ok());
        // Malformed bytes are refused, not read past their end.
        for bad in [&[6 << 3 | 2, 9, 1][..], &[0xff][..], &[6 << 3 | 7][..]] {
            assert!(observer::GetFlowsRequest::check(bad).is_err(), "{bad:?}");
        }
    }
}
