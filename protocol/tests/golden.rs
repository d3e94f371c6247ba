//! Golden vectors: `vectors/vectors.json` holds frames as hex with their decoded meaning. The
//! file is the reference for clients in other languages. This test fails if the encoder's
//! output for any vector changes, or if the file's bytes no longer decode to what it says.
//! Regenerate deliberately (after a versioned format change) with `STOCKD_BLESS=1`.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use stockd_protocol::frame::RawFrame;
use stockd_protocol::message::{ExtendReply, ReservationReply, ReserveReply, SkuReply};
use stockd_protocol::{
    Allocation, ChannelQuota, ChannelUse, Confirm, ErrorReply, FrameDecoder, Hello, HelloReply,
    IncomingInfo, LimitsReply, Line, LocationInfo, LocationsReply, Op, OpReply, QuotaLimit, Reply,
    Request, ReservationInfo, ReservationLine, ReservationState, Reserve, ReserveAt,
    ReserveAtReply, ResultCode, SkuInfo, SkuLimits,
};
use tokio_util::codec::Decoder;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Vector {
    name: String,
    direction: String,
    request_id: u64,
    hex: String,
    decoded: String,
}

enum Message {
    Request(Request),
    Reply(Reply),
}

fn vectors() -> Vec<(&'static str, u64, Message)> {
    use Message::{Reply as Rep, Request as Req};
    let sku = SkuInfo {
        on_hand: 10,
        reserved: 3,
        committed: 2,
        safety_stock: 1,
        available: 4,
        paused: false,
    };
    vec![
        (
            "hello",
            1,
            Req(Request::Hello(Hello {
                min_version: 1,
                max_version: 1,
                api_key: "key-1".into(),
                client_name: "shop".into(),
            })),
        ),
        (
            "hello_reply",
            1,
            Rep(Reply::Hello(HelloReply {
                code: ResultCode::Ok,
                version: 1,
                frame_body_bytes_max: 4_194_304,
                batch_ops_max: 8192,
                lines_max: 64,
                server_time_ms: 1_700_000_000_000,
            })),
        ),
        ("ping", 2, Req(Request::Op(Op::Ping))),
        ("ping_reply", 2, Rep(Reply::Op(OpReply::Ping(ResultCode::Ok)))),
        (
            "reserve",
            3,
            Req(Request::Op(Op::Reserve(Reserve {
                id: "order-1".into(),
                ttl_ms: 600_000,
                channel: "live".into(),
                customer: "c-9".into(),
                lines: vec![Line::new("tee-m", 2), Line::new("cap", 1)],
            }))),
        ),
        (
            "reserve_reply_ok",
            3,
            Rep(Reply::Op(OpReply::Reserve(ReserveReply {
                code: ResultCode::Ok,
                failed_line: None,
                expires_at_ms: 1_700_000_600_000,
            }))),
        ),
        (
            "reserve_reply_insufficient",
            3,
            Rep(Reply::Op(OpReply::Reserve(ReserveReply {
                code: ResultCode::InsufficientStock,
                failed_line: Some(1),
                expires_at_ms: 0,
            }))),
        ),
        (
            "confirm_partial",
            4,
            Req(Request::Op(Op::Confirm(Confirm {
                id: "order-1".into(),
                lines: vec![Line::new("tee-m", 1)],
            }))),
        ),
        ("confirm_reply", 4, Rep(Reply::Op(OpReply::Confirm(ResultCode::Ok)))),
        ("release", 5, Req(Request::Op(Op::Release { id: "order-2".into() }))),
        ("release_reply_not_found", 5, Rep(Reply::Op(OpReply::Release(ResultCode::NotFound)))),
        ("extend", 6, Req(Request::Op(Op::Extend { id: "order-1".into(), ttl_ms: 900_000 }))),
        (
            "extend_reply",
            6,
            Rep(Reply::Op(OpReply::Extend(ExtendReply {
                code: ResultCode::Ok,
                expires_at_ms: 1_700_000_900_000,
            }))),
        ),
        ("ship", 7, Req(Request::Op(Op::Ship { id: "order-1".into() }))),
        ("ship_reply", 7, Rep(Reply::Op(OpReply::Ship(ResultCode::Ok)))),
        (
            "set_stock_expected",
            8,
            Req(Request::Op(Op::SetStock { sku: "tee-m".into(), on_hand: 10, expected: Some(8) })),
        ),
        (
            "adjust_stock_negative",
            9,
            Req(Request::Op(Op::AdjustStock { sku: "tee-m".into(), delta: -3, expected: None })),
        ),
        (
            "set_safety_stock",
            10,
            Req(Request::Op(Op::SetSafetyStock { sku: "tee-m".into(), safety_stock: 1 })),
        ),
        ("query_sku", 11, Req(Request::Op(Op::QuerySku { sku: "tee-m".into() }))),
        (
            "query_sku_reply",
            11,
            Rep(Reply::Op(OpReply::QuerySku(SkuReply { code: ResultCode::Ok, info: sku }))),
        ),
        (
            "set_limits",
            21,
            Req(Request::Op(Op::SetLimits {
                sku: "tee-m".into(),
                limits: SkuLimits {
                    max_per_buyer: 2,
                    shared_pool: true,
                    quotas: vec![
                        ChannelQuota {
                            channel: "live".into(),
                            limit: QuotaLimit::BasisPoints(4_000),
                        },
                        ChannelQuota { channel: "web".into(), limit: QuotaLimit::Units(100) },
                    ],
                },
            })),
        ),
        (
            "set_limits_reply",
            21,
            Rep(Reply::Op(OpReply::SetLimits(SkuReply { code: ResultCode::Ok, info: sku }))),
        ),
        ("query_limits", 22, Req(Request::Op(Op::QueryLimits { sku: "tee-m".into() }))),
        (
            "query_limits_reply",
            22,
            Rep(Reply::Op(OpReply::QueryLimits(LimitsReply {
                code: ResultCode::Ok,
                limits: SkuLimits {
                    max_per_buyer: 2,
                    shared_pool: false,
                    quotas: vec![ChannelQuota {
                        channel: "live".into(),
                        limit: QuotaLimit::BasisPoints(4_000),
                    }],
                },
                channels: vec![ChannelUse { channel: "live".into(), allocation: 4, used: 1 }],
                pool: 6,
                pool_used: 2,
            }))),
        ),
        (
            "query_limits_reply_unknown_sku",
            23,
            Rep(Reply::Op(OpReply::QueryLimits(LimitsReply::refused(ResultCode::UnknownSku)))),
        ),
        (
            "reserve_at",
            24,
            Req(Request::Op(Op::ReserveAt(ReserveAt {
                reserve: Reserve {
                    id: "order-9".into(),
                    ttl_ms: 0,
                    channel: "".into(),
                    customer: "".into(),
                    lines: vec![Line::new("tee-m", 3)],
                },
                location: "".into(),
                split: true,
            }))),
        ),
        (
            "reserve_at_reply",
            24,
            Rep(Reply::Op(OpReply::ReserveAt(ReserveAtReply {
                reply: ReserveReply {
                    code: ResultCode::Ok,
                    failed_line: None,
                    expires_at_ms: 1_700_000_600_000,
                },
                allocations: vec![
                    Allocation { line: 0, location: "east".into(), qty: 2 },
                    Allocation { line: 0, location: "west".into(), qty: 1 },
                ],
            }))),
        ),
        (
            "reserve_at_reply_unknown_location",
            25,
            Rep(Reply::Op(OpReply::ReserveAt(ReserveAtReply {
                reply: ReserveReply {
                    code: ResultCode::UnknownLocation,
                    failed_line: Some(0),
                    expires_at_ms: 0,
                },
                allocations: vec![],
            }))),
        ),
        (
            "set_location",
            26,
            Req(Request::Op(Op::SetLocation {
                sku: "tee-m".into(),
                location: "east".into(),
                on_hand: 40,
                priority: 1,
                expected: None,
            })),
        ),
        (
            "set_location_reply",
            26,
            Rep(Reply::Op(OpReply::SetLocation(SkuReply { code: ResultCode::Ok, info: sku }))),
        ),
        (
            "adjust_location",
            27,
            Req(Request::Op(Op::AdjustLocation {
                sku: "tee-m".into(),
                location: "east".into(),
                delta: -2,
                expected: Some(40),
            })),
        ),
        (
            "set_incoming",
            28,
            Req(Request::Op(Op::SetIncoming {
                sku: "tee-m".into(),
                location: "west".into(),
                reference: "po-311".into(),
                qty: 500,
                eta_ms: 1_700_086_400_000,
            })),
        ),
        (
            "receive_incoming",
            29,
            Req(Request::Op(Op::ReceiveIncoming {
                sku: "tee-m".into(),
                location: "west".into(),
                reference: "po-311".into(),
                qty: 0,
            })),
        ),
        (
            "set_preorder",
            30,
            Req(Request::Op(Op::SetPreorder { sku: "tee-m".into(), preorder_max: 200 })),
        ),
        ("query_locations", 31, Req(Request::Op(Op::QueryLocations { sku: "tee-m".into() }))),
        (
            "query_locations_reply",
            31,
            Rep(Reply::Op(OpReply::QueryLocations(LocationsReply {
                code: ResultCode::Ok,
                preorder_max: 200,
                preordered: 0,
                locations: vec![
                    LocationInfo {
                        location: "east".into(),
                        priority: 1,
                        on_hand: 38,
                        reserved: 2,
                        committed: 0,
                        incoming: 0,
                        available: 36,
                    },
                    LocationInfo {
                        location: "west".into(),
                        priority: 2,
                        on_hand: 0,
                        reserved: 1,
                        committed: 0,
                        incoming: 500,
                        available: 499,
                    },
                ],
                incoming: vec![IncomingInfo {
                    location: "west".into(),
                    reference: "po-311".into(),
                    qty: 500,
                    eta_ms: 1_700_086_400_000,
                }],
            }))),
        ),
        ("query_reservation", 12, Req(Request::Op(Op::QueryReservation { id: "order-1".into() }))),
        (
            "query_reservation_reply",
            12,
            Rep(Reply::Op(OpReply::QueryReservation(ReservationReply {
                code: ResultCode::Ok,
                info: Some(ReservationInfo {
                    state: ReservationState::Confirmed,
                    created_at_ms: 1_700_000_000_000,
                    expires_at_ms: 1_700_000_600_000,
                    channel: "live".into(),
                    customer: "c-9".into(),
                    lines: vec![
                        ReservationLine { sku: "cap".into(), qty_held: 1, qty_confirmed: 0 },
                        ReservationLine { sku: "tee-m".into(), qty_held: 2, qty_confirmed: 1 },
                    ],
                }),
            }))),
        ),
        (
            "query_reservation_reply_not_found",
            13,
            Rep(Reply::Op(OpReply::QueryReservation(ReservationReply {
                code: ResultCode::NotFound,
                info: None,
            }))),
        ),
        (
            "batch",
            14,
            Req(Request::Batch(vec![
                Op::Reserve(Reserve {
                    id: "o-1".into(),
                    ttl_ms: 0,
                    channel: Bytes::new(),
                    customer: Bytes::new(),
                    lines: vec![Line::new("hot", 1)],
                }),
                Op::QuerySku { sku: "hot".into() },
            ])),
        ),
        (
            "batch_reply",
            14,
            Rep(Reply::Batch(vec![
                OpReply::Reserve(ReserveReply {
                    code: ResultCode::SkuPaused,
                    failed_line: Some(0),
                    expires_at_ms: 0,
                }),
                OpReply::QuerySku(SkuReply {
                    code: ResultCode::Ok,
                    info: SkuInfo {
                        on_hand: 5,
                        reserved: 0,
                        committed: 0,
                        safety_stock: 5,
                        available: 0,
                        paused: true,
                    },
                }),
            ])),
        ),
        ("delete_sku", 32, Req(Request::Op(Op::DeleteSku { sku: "old-tee".into() }))),
        (
            "delete_sku_reply_in_use",
            32,
            Rep(Reply::Op(OpReply::DeleteSku(SkuReply {
                code: ResultCode::SkuInUse,
                info: SkuInfo {
                    on_hand: 12,
                    reserved: 1,
                    committed: 0,
                    safety_stock: 0,
                    available: 11,
                    paused: false,
                },
            }))),
        ),
        (
            "error_reply",
            15,
            Rep(Reply::Error(ErrorReply {
                code: ResultCode::Malformed,
                message: "body truncated".into(),
            })),
        ),
    ]
}

fn encode(request_id: u64, message: &Message) -> (String, Vec<u8>, String) {
    let mut buf = BytesMut::new();
    let (direction, decoded) = match message {
        Message::Request(r) => {
            r.encode(request_id, &mut buf);
            ("request", format!("{r:?}"))
        }
        Message::Reply(r) => {
            r.encode(request_id, &mut buf);
            ("reply", format!("{r:?}"))
        }
    };
    (direction.to_string(), buf.to_vec(), decoded)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "even hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn decode_frame(bytes: &[u8]) -> RawFrame {
    let mut buf = BytesMut::from(bytes);
    let frame = FrameDecoder::new(u32::MAX).decode(&mut buf).expect("valid").expect("complete");
    assert!(buf.is_empty(), "exactly one frame");
    frame
}

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/vectors.json");

#[test]
fn golden_vectors() {
    let generated: Vec<Vector> = vectors()
        .iter()
        .map(|(name, request_id, message)| {
            let (direction, bytes, decoded) = encode(*request_id, message);
            Vector {
                name: name.to_string(),
                direction,
                request_id: *request_id,
                hex: to_hex(&bytes),
                decoded,
            }
        })
        .collect();
    if std::env::var_os("STOCKD_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&generated).expect("json") + "\n";
        std::fs::write(PATH, text).expect("write vectors");
    }
    let stored: Vec<Vector> =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("vectors file")).expect("json");
    assert_eq!(stored.len(), generated.len(), "vector count");
    for (stored, generated) in stored.iter().zip(&generated) {
        assert_eq!(stored, generated, "encoder output changed for {}", stored.name);
        // Decode the file's bytes independently of the encoder.
        let frame = decode_frame(&from_hex(&stored.hex));
        assert_eq!(frame.header.request_id, stored.request_id, "{}", stored.name);
        let decoded = match stored.direction.as_str() {
            "request" => {
                format!("{:?}", Request::decode(frame.header.opcode, frame.body).expect("decodes"))
            }
            "reply" => format!("{:?}", Reply::decode(&frame.header, frame.body).expect("decodes")),
            other => panic!("unknown direction {other}"),
        };
        assert_eq!(decoded, stored.decoded, "{}", stored.name);
    }
}
