//! The frame decoder and every request and reply body decoder, fed a byte stream in pieces.
//!
//! Input: byte 0 picks the piece size the stream arrives in (1..=64); the rest is the stream.
//! Checks: no panic; no frame over the body limit; a fatal error ends the stream (as the
//! server closes the connection); every request that decodes encodes back to bytes that decode
//! to the same request (the encoder and decoder agree).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stockd_protocol::frame::Header;
use stockd_protocol::{FrameDecoder, Reply, Request};
use tokio_util::codec::Decoder;

const BODY_MAX: u32 = 64 * 1024;

fn round_trip(request: &Request) {
    let mut encoded = BytesMut::new();
    request.encode(7, &mut encoded);
    let frame = FrameDecoder::new(u32::MAX)
        .decode(&mut encoded)
        .expect("our own frame decodes")
        .expect("our own frame is whole");
    let again = Request::decode(frame.header.opcode, frame.body).expect("our own body decodes");
    assert_eq!(&again, request, "encode and decode disagree");
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else { return };
    let piece = usize::from(piece % 64) + 1;
    let mut decoder = FrameDecoder::new(BODY_MAX);
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() <= BODY_MAX as usize, "frame over the limit");
                    if let Ok(request) = Request::decode(frame.header.opcode, frame.body.clone()) {
                        round_trip(&request);
                    }
                    let reply_header = Header { flags: 1, ..frame.header };
                    let _ = Reply::decode(&reply_header, frame.body);
                }
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
});
