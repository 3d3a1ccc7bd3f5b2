//! The protobuf codec every `holdfast.v1` service and client is generated with: prost's, with
//! smaller per-stream buffers than tonic's default.
//!
//! tonic allocates an encode and a decode buffer of `buffer_size` for every RPC as it starts and
//! keeps them for the RPC's life. Its default, 8 KiB each, is spent on every agent stream — a
//! coordinator holding 10,000 agents keeps 20,000 of them, and a long-lived stream writes
//! through all of each (a buffer is reused from its start only once it is full) — while an
//! agent's messages are a few hundred bytes. [`BUFFER_BYTES`] holds the usual message; a larger
//! one grows the buffer to fit it (bounded by the services' decoding limit), so nothing is
//! refused that the default took.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Encode and decode buffer allocated per RPC, in bytes: a heartbeat with its health summary,
/// a welcome, a ping or a launch fit in it.
pub const BUFFER_BYTES: usize = 256;
/// How much a server stream batches before yielding (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// prost's codec with [`BUFFER_BYTES`] buffers (the generated services and clients call
/// `Default::default()`).
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(buffer_settings())
    }
}
