//! Golden bytes: the encoding of the handshake and of a few requests is a contract with deployed
//! clients. If one of these fails, the wire format changed: bump the protocol major instead.

use orchestrator_proto::frame::{decode, encode};
use orchestrator_proto::message::{ClientMessage, Hello, Request, SubmitRequest};
use orchestrator_proto::{ErrorCode, ServerMessage, WireError};

#[test]
fn hello_bytes_are_pinned() {
    let hello = ClientMessage::Hello(Hello::current("0.1.0"));
    let bytes = encode(&hello).unwrap();
    // variant 0, magic varint, major 1, minor 3, "0.1.0". A new minor changes the value here,
    // never the layout: clients of every 1.x minor are served.
    assert_eq!(
        bytes,
        vec![0, 200, 134, 201, 250, 4, 1, 3, 5, b'0', b'.', b'1', b'.', b'0']
    );
    assert_eq!(decode::<ClientMessage>(&bytes).unwrap(), hello);
}

#[test]
fn status_and_submit_bytes_are_pinned() {
    assert_eq!(
        encode(&ClientMessage::Request(Request::Status)).unwrap(),
        vec![1, 0]
    );
    let submit = ClientMessage::Request(Request::Submit(SubmitRequest {
        goal: "fix".into(),
        required_capabilities: vec!["gpu".into()],
        workspace_dir: None,
        ttl_secs: Some(60),
        wait: false,
    }));
    let bytes = encode(&submit).unwrap();
    assert_eq!(
        bytes,
        vec![1, 1, 3, b'f', b'i', b'x', 1, 3, b'g', b'p', b'u', 0, 1, 60, 0]
    );
    assert_eq!(decode::<ClientMessage>(&bytes).unwrap(), submit);
}

#[test]
fn error_reply_bytes_are_pinned() {
    let err = ServerMessage::Err(WireError::new(ErrorCode::InvalidTransition, "x"));
    assert_eq!(encode(&err).unwrap(), vec![2, 1, 1, b'x', 0]);
}

#[test]
fn request_variant_indices_are_stable() {
    // Appending is allowed; reordering is not.
    let watch = encode(&ClientMessage::Request(Request::Watch)).unwrap();
    assert_eq!(watch, vec![1, 14]);
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        &codes[..3],
        &["not_found", "invalid_transition", "invalid_reason"]
    );
    assert_eq!(encode(&ErrorCode::Internal).unwrap(), vec![13]);
}

#[test]
fn codes_newer_than_a_client_reach_it_as_internal() {
    let err = WireError::new(ErrorCode::StorageFull, "disk full");
    let old = err.clone().for_minor(0);
    assert_eq!(old.code, ErrorCode::Internal);
    assert_eq!(old.details["code"], "storage_full");
    assert_eq!(err.clone().for_minor(1), err);
    let unavailable = WireError::new(ErrorCode::StoreUnavailable, "down");
    assert_eq!(unavailable.clone().for_minor(1).code, ErrorCode::Internal);
    assert_eq!(unavailable.clone().for_minor(2), unavailable);
    // Appended after shutting_down, in this order.
    let tail: Vec<&str> = ErrorCode::ALL[17..].iter().map(|c| c.as_str()).collect();
    assert_eq!(
        tail,
        [
            "shutting_down",
            "reply_too_large",
            "storage_full",
            "store_damaged",
            "http_off",
            "store_unavailable"
        ]
    );
}
