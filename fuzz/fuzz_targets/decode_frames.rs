//! A byte stream as the daemon's socket sees it: split into frames by the daemon's own codec, each
//! frame decoded as a client and as a server message. Nothing may panic, the codec must never hand
//! out a frame over the limit, and whatever decodes must encode back to a message that decodes to the
//! same value. The blocking helper `read_frame` (orchctl's side) gets the same bytes.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use orchestrator_proto::frame::{codec, decode, encode, read_frame};
use orchestrator_proto::{ClientMessage, ServerMessage};
use tokio_util::codec::Decoder;

/// Small, so that oversized frames are reachable by the fuzzer.
const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut codec = codec(MAX_FRAME);
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= MAX_FRAME);
                if let Ok(msg) = decode::<ClientMessage>(&frame) {
                    let again = encode(&msg).expect("a decoded message encodes");
                    assert_eq!(decode::<ClientMessage>(&again).expect("round trip"), msg);
                }
                if let Ok(msg) = decode::<ServerMessage>(&frame) {
                    let again = encode(&msg).expect("a decoded message encodes");
                    assert_eq!(decode::<ServerMessage>(&again).expect("round trip"), msg);
                }
            }
            Ok(None) => {
                // End of input inside a frame: what the daemon reports as a truncated frame.
                let _ = codec.decode_eof(&mut buf);
                break;
            }
            Err(_) => break,
        }
    }
    let mut cursor = std::io::Cursor::new(data);
    while let Ok(_msg) = read_frame::<_, ClientMessage>(&mut cursor, MAX_FRAME) {}
});
