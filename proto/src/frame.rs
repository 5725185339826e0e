//! Framing: a 4-byte big-endian length, then a postcard payload.
//!
//! The daemon uses [`codec`] with tokio; `orchctl` and tests use the blocking [`write_frame`] and
//! [`read_frame`] helpers, which apply the same limits.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, Read, Write};
use tokio_util::codec::LengthDelimitedCodec;

/// Default largest frame accepted, in bytes of payload.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// The codec both sides speak.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(msg)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Write one framed message.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let payload = encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Read one framed message, refusing frames over `max_frame` bytes.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R, max_frame: usize) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max_frame {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max_frame}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    decode(&payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
