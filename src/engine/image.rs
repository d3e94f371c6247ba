//! A complete, canonical image of the engine's state: what snapshots store and what tests
//! compare. Only independent facts are kept; everything derivable (held and committed units,
//! the deadline and retention indexes) is rebuilt on load, which doubles as a consistency check
//! of the stored data.

use std::sync::Arc;

use rkyv::{Archive, Deserialize, Serialize};
use stockd_protocol::{ChannelQuota, QuotaLimit, ReservationState, SkuLimits};
use thiserror::Error;

use super::limits::Limits;
use super::shard::{HeldLine, Key, Reservation, Shard, Sku};
use super::{Engine, EngineConfig};

/// The engine's state, sorted by id so that equal states give equal images.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub skus: Vec<SkuImage>,
    pub reservations: Vec<ReservationImage>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SkuImage {
    pub sku: Vec<u8>,
    pub on_hand: u64,
    pub safety_stock: u64,
    /// Per-buyer limit and channel quotas (the uses are recounted on load).
    pub limits: Option<LimitsImage>,
}

/// The image layout of snapshot format version 1 (before SKU limits), still read.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageV1 {
    pub skus: Vec<SkuImageV1>,
    pub reservations: Vec<ReservationImage>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SkuImageV1 {
    pub sku: Vec<u8>,
    pub on_hand: u64,
    pub safety_stock: u64,
}

impl ImageV1 {
    /// The same state in the current layout (no SKU has limits).
    pub fn upgrade(self) -> Image {
        let skus = self.skus.into_iter().map(|s| SkuImage {
            sku: s.sku,
            on_hand: s.on_hand,
            safety_stock: s.safety_stock,
            limits: None,
        });
        Image { skus: skus.collect(), reservations: self.reservations }
    }
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LimitsImage {
    pub max_per_buyer: u32,
    pub shared_pool: bool,
    pub quotas: Vec<QuotaImage>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QuotaImage {
    pub channel: Vec<u8>,
    /// 0: `value` units; 1: `value` basis points of the sellable stock.
    pub kind: u8,
    pub value: u64,
}

impl LimitsImage {
    fn of(limits: &SkuLimits) -> LimitsImage {
        LimitsImage {
            max_per_buyer: limits.max_per_buyer,
            shared_pool: limits.shared_pool,
            quotas: limits
                .quotas
                .iter()
                .map(|q| {
                    let (kind, value) = match q.limit {
                        QuotaLimit::Units(units) => (0, units),
                        QuotaLimit::BasisPoints(basis) => (1, u64::from(basis)),
                    };
                    QuotaImage { channel: q.channel.to_vec(), kind, value }
                })
                .collect(),
        }
    }

    fn limits(&self) -> Result<SkuLimits, ImageError> {
        let quotas = self.quotas.iter().map(|q| {
            let limit = match (q.kind, u16::try_from(q.value)) {
                (0, _) => QuotaLimit::Units(q.value),
                (1, Ok(basis)) if basis <= 10_000 => QuotaLimit::BasisPoints(basis),
                _ => return Err(bad(format!("quota kind {} value {}", q.kind, q.value))),
            };
            Ok(ChannelQuota { channel: q.channel.clone().into(), limit })
        });
        Ok(SkuLimits {
            max_per_buyer: self.max_per_buyer,
            shared_pool: self.shared_pool,
            quotas: quotas.collect::<Result<_, _>>()?,
        })
    }
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReservationImage {
    pub id: Vec<u8>,
    /// `ReservationState` as its wire value.
    pub state: u8,
    pub lines: Vec<LineImage>,
    pub ttl_ms: u32,
    pub channel: Vec<u8>,
    pub customer: Vec<u8>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub forget_at_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LineImage {
    pub sku: Vec<u8>,
    pub qty: u32,
    pub confirmed: u32,
}

/// Why an image cannot be loaded: it is not a state the engine could have produced.
#[derive(Debug, Error)]
#[error("inconsistent state image: {0}")]
pub struct ImageError(String);

fn bad(message: impl Into<String>) -> ImageError {
    ImageError(message.into())
}

impl Engine {
    /// Copies the whole state. Shards are read one after another, so the image is consistent
    /// only when no command runs concurrently (recovery, snapshot rebuild, shutdown, tests).
    pub fn image(&self) -> Image {
        let mut image = Image::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            image.skus.extend(shard.skus.iter().map(|(sku, s)| SkuImage {
                sku: sku.to_vec(),
                on_hand: s.on_hand,
                safety_stock: s.safety_stock,
                limits: s.limits.as_deref().map(|l| LimitsImage::of(&l.config())),
            }));
            image.reservations.extend(shard.reservations.iter().map(|(id, r)| {
                ReservationImage {
                    id: id.to_vec(),
                    state: r.state as u8,
                    lines: r
                        .lines
                        .iter()
                        .enumerate()
                        .map(|(i, line)| LineImage {
                            sku: line.sku.to_vec(),
                            qty: line.qty,
                            confirmed: r.confirmed.get(i).copied().unwrap_or(0),
                        })
                        .collect(),
                    ttl_ms: r.ttl_ms,
                    channel: r.channel.as_deref().unwrap_or_default().to_vec(),
                    customer: r.customer.as_deref().unwrap_or_default().to_vec(),
                    created_at_ms: r.created_at_ms,
                    expires_at_ms: r.expires_at_ms,
                    forget_at_ms: r.forget_at_ms,
                }
            }));
        }
        image.skus.sort_unstable_by(|a, b| a.sku.cmp(&b.sku));
        image.reservations.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        image
    }

    /// Rebuilds an engine from an image, checking that it is internally consistent.
    pub fn from_image(config: EngineConfig, image: &Image) -> Result<Engine, ImageError> {
        let engine = Engine::new(config);
        for s in &image.skus {
            if s.sku.is_empty() {
                return Err(bad("empty SKU id"));
            }
            let mut shard = engine.shards[engine.shard_of(&s.sku)].lock();
            let limits = match &s.limits {
                Some(image) => {
                    let config = image.limits()?;
                    if config == SkuLimits::default() || !Limits::valid(&config) {
                        return Err(bad("SKU limits that could not have been set"));
                    }
                    Some(Box::new(Limits::new(&config)))
                }
                None => None,
            };
            let sku =
                Sku { on_hand: s.on_hand, safety_stock: s.safety_stock, limits, ..Sku::default() };
            if shard.skus.insert(Key::from(&s.sku[..]), sku).is_some() {
                return Err(bad(format!("SKU {:?} twice", String::from_utf8_lossy(&s.sku))));
            }
        }
        for r in &image.reservations {
            engine.load_reservation(r)?;
        }
        Ok(engine)
    }

    fn load_reservation(&self, r: &ReservationImage) -> Result<(), ImageError> {
        let name = || String::from_utf8_lossy(&r.id).into_owned();
        let state = ReservationState::from_u8(r.state)
            .ok_or_else(|| bad(format!("reservation {} has state {}", name(), r.state)))?;
        if r.id.is_empty() || r.lines.is_empty() {
            return Err(bad(format!("reservation {:?} is empty", name())));
        }
        if !r.lines.windows(2).all(|w| w[0].sku < w[1].sku) {
            return Err(bad(format!("reservation {} lines not sorted and unique", name())));
        }
        let finished = !matches!(state, ReservationState::Held | ReservationState::Confirmed);
        if finished != (r.forget_at_ms != 0) {
            return Err(bad(format!("reservation {} retention does not match its state", name())));
        }
        let confirmed = matches!(state, ReservationState::Confirmed | ReservationState::Shipped);
        let mut lines = Vec::with_capacity(r.lines.len());
        for line in &r.lines {
            if line.qty == 0 || line.confirmed > line.qty || (!confirmed && line.confirmed != 0) {
                return Err(bad(format!("reservation {} has a bad line quantity", name())));
            }
            let shard = self.shards[self.shard_of(&line.sku)].lock();
            let key = match shard.skus.get_key_value(&line.sku[..]) {
                Some((key, _)) => key.clone(),
                None => return Err(bad(format!("reservation {} names an unknown SKU", name()))),
            };
            lines.push(HeldLine { sku: key, qty: line.qty });
        }
        let id = Key::from(&r.id[..]);
        let tag = |bytes: &[u8]| (!bytes.is_empty()).then(|| bytes.into());
        let reservation = Reservation {
            state,
            lines: Arc::from(lines),
            confirmed: if confirmed {
                r.lines.iter().map(|l| l.confirmed).collect()
            } else {
                Box::default()
            },
            ttl_ms: r.ttl_ms,
            channel: tag(&r.channel),
            customer: tag(&r.customer),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            forget_at_ms: r.forget_at_ms,
        };
        for (index, (line, image)) in reservation.lines.iter().zip(&r.lines).enumerate() {
            let mut shard = self.shards[self.shard_of(&line.sku)].lock();
            let sku = shard.skus.get_mut(&line.sku).expect("found above");
            match state {
                ReservationState::Held => sku.hold(u64::from(line.qty), r.expires_at_ms),
                ReservationState::Confirmed => sku.committed += u64::from(image.confirmed),
                _ => {}
            }
            if let Some(limits) = &mut sku.limits {
                limits.count(&reservation, index);
            }
        }
        let mut shard = self.shards[self.shard_of(&r.id)].lock();
        let shard: &mut Shard = &mut shard;
        if state == ReservationState::Held {
            shard.deadlines.insert((r.expires_at_ms, id.clone()));
        }
        if finished {
            shard.retired.insert((r.forget_at_ms, id.clone()));
        }
        if shard.reservations.insert(id, reservation).is_some() {
            return Err(bad(format!("reservation {} twice", name())));
        }
        Ok(())
    }
}
