//! Length-prefixed bincode frames: what the peer streams ([`crate::append_stream`],
//! [`crate::forward_stream`]) speak once an HTTP request has been upgraded to a raw
//! connection. Each frame is one message; TCP keeps them in order.

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadHalf;
use tokio::io::WriteHalf;
use tokio_util::codec::FramedRead;
use tokio_util::codec::FramedWrite;
use tokio_util::codec::LengthDelimitedCodec;

/// Largest frame either side accepts: a batch of entries stays far below it (see
/// `max_payload_entries`), the same bound as the peer routes' body limit.
const MAX_FRAME_BYTES: usize = 256 << 20;

/// One direction of an upgraded connection, as frames.
pub(crate) type FrameReader<IO> = FramedRead<ReadHalf<IO>, LengthDelimitedCodec>;
pub(crate) type FrameWriter<IO> = FramedWrite<WriteHalf<IO>, LengthDelimitedCodec>;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

pub(crate) fn framed<IO: AsyncRead + AsyncWrite>(io: IO) -> (FrameReader<IO>, FrameWriter<IO>) {
    let (read, write) = tokio::io::split(io);
    (
        FramedRead::new(read, codec()),
        FramedWrite::new(write, codec()),
    )
}

pub(crate) fn encode<T: Serialize>(frame: &T) -> std::io::Result<Bytes> {
    bincode::serialize(frame)
        .map(Bytes::from)
        .map_err(std::io::Error::other)
}

/// Decodes what a reader's `next()` returned; an error says why the stream cannot go on.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    frame: Option<std::io::Result<bytes::BytesMut>>,
) -> Result<T, String> {
    match frame {
        Some(Ok(bytes)) => {
            bincode::deserialize(&bytes).map_err(|e| format!("undecodable frame: {e}"))
        }
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the connection closed".into()),
    }
}
