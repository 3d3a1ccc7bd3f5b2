//! A gRPC codec that sends arbitrary bytes as messages and reads replies as bytes: how a broken
//! or hostile peer looks to the coordinator.

use holdfast_proto::v1 as pb;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::Bytes;
use tonic::Status;

/// Sends bytes as they are and reads replies as bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len)))
    }
}

/// An agent's hello for `node_id`, stamped now, as a hostile client would send it.
pub fn hello(node_id: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            node_id: node_id.into(),
            hostname: "host".into(),
            boot_id: "boot".into(),
            sent_unix_ms: holdfast_coordinator::now_ms(),
            agent_started_unix_ms: holdfast_coordinator::now_ms(),
            ..Default::default()
        })),
    }
}
