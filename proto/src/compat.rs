//! Fields added within a protocol major. Postcard is not self-describing, so a struct that gains a
//! field changes shape; a field added in minor N is written only for a peer that announced minor N
//! or later ([`encode_for_minor`]) and read only from one ([`decode_for_minor`]). JSON always
//! carries every field.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::Cell;

thread_local! {
    /// The minor of the peer being written to or read from on this thread.
    static PEER_MINOR: Cell<u16> = const { Cell::new(crate::message::PROTOCOL_MINOR) };
}

/// Restores the previous peer minor however the encoding ends.
struct PeerMinor(u16);

impl PeerMinor {
    fn set(minor: u16) -> PeerMinor {
        PeerMinor(PEER_MINOR.with(|m| m.replace(minor)))
    }
}

impl Drop for PeerMinor {
    fn drop(&mut self) {
        PEER_MINOR.with(|m| m.set(self.0));
    }
}

/// Run `f` (an encoding or a decoding) for a peer speaking protocol minor `minor`.
pub fn with_peer_minor<R>(minor: u16, f: impl FnOnce() -> R) -> R {
    let _peer = PeerMinor::set(minor);
    f()
}

/// Encode `msg` as a peer speaking protocol minor `minor` reads it.
pub fn encode_for_minor<T: Serialize>(msg: &T, minor: u16) -> Result<Vec<u8>, postcard::Error> {
    let _peer = PeerMinor::set(minor);
    postcard::to_stdvec(msg)
}

/// Decode `bytes` written by a peer speaking protocol minor `minor`.
pub fn decode_for_minor<T: DeserializeOwned>(
    bytes: &[u8],
    minor: u16,
) -> Result<T, postcard::Error> {
    let _peer = PeerMinor::set(minor);
    postcard::from_bytes(bytes)
}

fn peer_knows(minor: u16) -> bool {
    PEER_MINOR.with(|m| m.get()) >= minor
}

/// `serialize_with` for a field added in minor 3: nothing at all (a unit is zero bytes in
/// postcard) for an older peer.
pub fn since_3<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() || peer_knows(3) {
        value.serialize(s)
    } else {
        s.serialize_unit()
    }
}

/// `deserialize_with` for a field added in minor 3: the default, reading nothing, from an older peer.
pub fn since_3_de<'de, T: Deserialize<'de> + Default, D: Deserializer<'de>>(
    d: D,
) -> Result<T, D::Error> {
    if d.is_human_readable() || peer_knows(3) {
        T::deserialize(d)
    } else {
        Ok(T::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Old {
        a: u32,
        b: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct New {
        a: u32,
        b: String,
        #[serde(default, serialize_with = "since_3", deserialize_with = "since_3_de")]
        c: Option<u64>,
    }

    #[test]
    fn an_older_peer_reads_the_old_shape() {
        let new = New {
            a: 7,
            b: "x".into(),
            c: Some(9),
        };
        let bytes = encode_for_minor(&vec![&new, &new], 2).unwrap();
        let old: Vec<Old> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            old,
            vec![
                Old {
                    a: 7,
                    b: "x".into()
                },
                Old {
                    a: 7,
                    b: "x".into()
                }
            ]
        );
        let back: Vec<New> = decode_for_minor(&bytes, 2).unwrap();
        assert_eq!(back[1].c, None);
    }

    #[test]
    fn a_current_peer_reads_the_new_field() {
        let new = New {
            a: 1,
            b: String::new(),
            c: Some(3),
        };
        let bytes = encode_for_minor(&new, 3).unwrap();
        assert_eq!(decode_for_minor::<New>(&bytes, 3).unwrap(), new);
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.contains("\"c\":3"), "{json}");
    }
}
