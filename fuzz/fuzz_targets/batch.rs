//! Batch bodies, past the frame checksums: the batch request decoder (item headers, per-item
//! limits, the batch-wide limits) and the batch reply decoder.
//!
//! Input: the body of a `BATCH` frame. Checks: no panic; a batch that decodes respects the
//! protocol's limits and encodes back to the same batch.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use stockd_protocol::frame::Header;
use stockd_protocol::limits::BATCH_OPS_MAX;
use stockd_protocol::{FrameDecoder, Opcode, Reply, Request};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(request) = Request::decode(Opcode::Batch as u8, body.clone()) {
        let Request::Batch(ops) = &request else { panic!("a batch body decoded as {request:?}") };
        assert!(ops.len() <= BATCH_OPS_MAX as usize, "batch over the limit");
        let mut encoded = BytesMut::new();
        request.encode(1, &mut encoded);
        let frame = FrameDecoder::new(u32::MAX).decode(&mut encoded).unwrap().unwrap();
        assert_eq!(Request::decode(frame.header.opcode, frame.body).unwrap(), request);
    }
    let header =
        Header { version: 1, opcode: Opcode::Batch as u8, flags: 1, request_id: 1, body_len: 0 };
    if let Ok(Reply::Batch(replies)) = Reply::decode(&header, body) {
        assert!(replies.len() <= BATCH_OPS_MAX as usize, "batch reply over the limit");
    }
});
