//! A complete, canonical image of the engine's state: what snapshots store and what tests
//! compare. Only independent facts are kept; everything derivable (held and committed units,
//! the deadline and retention indexes) is rebuilt on load, which doubles as a consistency check
//! of the stored data.

use std::sync::atomic::{AtomicBool, Ordering};

use smallvec::SmallVec;

use rkyv::{Archive, Deserialize, Serialize};
use stockd_protocol::{ChannelQuota, QuotaLimit, ReservationState, SkuLimits};
use thiserror::Error;

use stockd_protocol::limits::{
    INCOMING_PER_SKU_MAX, LOCATIONS_PER_SKU_MAX, LOCATION_BYTES_MAX, REFERENCE_BYTES_MAX,
};

use super::limits::Limits;
use super::locations::{Incoming, Location, Supply};
use super::shard::{Counters, HeldLine, Key, Reservation, Shard, Sku};
use super::{Engine, EngineConfig};
use crate::aftersales::AftersalesImage;

/// The engine's state, sorted by id so that equal states give equal images.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub skus: Vec<SkuImage>,
    pub reservations: Vec<ReservationImage>,
    /// Locations of SKUs that have them, by SKU then location id.
    pub locations: Vec<LocationImage>,
    /// Incoming deliveries and preorder allowances, by SKU.
    pub supplies: Vec<SupplyImage>,
    /// Where held and confirmed lines on SKUs with locations take their units from, by
    /// reservation, line, then allocation order.
    pub allocations: Vec<AllocationImage>,
    /// Return tickets and unmatched parcels (snapshot version 4).
    pub aftersales: AftersalesImage,
    /// Ids of deleted SKUs that still have an entry (snapshot version 5): stored reservations
    /// that are over may name them. They have no other rows.
    pub deleted_skus: Vec<Vec<u8>>,
}

/// The image layout of snapshot format version 4 (before deleted SKUs), still read.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageV4 {
    pub skus: Vec<SkuImage>,
    pub reservations: Vec<ReservationImage>,
    pub locations: Vec<LocationImage>,
    pub supplies: Vec<SupplyImage>,
    pub allocations: Vec<AllocationImage>,
    pub aftersales: AftersalesImage,
}

impl ImageV4 {
    /// The same state in the current layout (no deleted SKUs).
    pub fn upgrade(self) -> Image {
        Image {
            skus: self.skus,
            reservations: self.reservations,
            locations: self.locations,
            supplies: self.supplies,
            allocations: self.allocations,
            aftersales: self.aftersales,
            deleted_skus: Vec::new(),
        }
    }
}

/// The image layout of snapshot format version 3 (before tickets), still read.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageV3 {
    pub skus: Vec<SkuImage>,
    pub reservations: Vec<ReservationImage>,
    pub locations: Vec<LocationImage>,
    pub supplies: Vec<SupplyImage>,
    pub allocations: Vec<AllocationImage>,
}

impl ImageV3 {
    /// The same state in the current layout (no tickets).
    pub fn upgrade(self) -> Image {
        Image {
            skus: self.skus,
            reservations: self.reservations,
            locations: self.locations,
            supplies: self.supplies,
            allocations: self.allocations,
            aftersales: AftersalesImage::default(),
            deleted_skus: Vec::new(),
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LocationImage {
    pub sku: Vec<u8>,
    pub location: Vec<u8>,
    pub priority: u32,
    pub on_hand: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SupplyImage {
    pub sku: Vec<u8>,
    pub preorder_max: u64,
    pub incoming: Vec<IncomingImage>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IncomingImage {
    /// Empty on a SKU without locations.
    pub location: Vec<u8>,
    pub reference: Vec<u8>,
    pub qty: u64,
    pub eta_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AllocationImage {
    pub id: Vec<u8>,
    /// Index of the line in the reservation's (sorted) lines.
    pub line: u16,
    pub location: Vec<u8>,
    pub qty: u32,
}

/// The image layout of snapshot format version 2 (before locations and supplies), still read.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageV2 {
    pub skus: Vec<SkuImage>,
    pub reservations: Vec<ReservationImage>,
}

impl ImageV2 {
    /// The same state in the current layout (no SKU has locations or deliveries).
    pub fn upgrade(self) -> Image {
        Image { skus: self.skus, reservations: self.reservations, ..Image::default() }
    }
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
        ImageV2 { skus: skus.collect(), reservations: self.reservations }.upgrade()
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

/// Threads to load `reservations` reservations on: one for a small state, every core for a
/// large one.
pub fn load_threads(reservations: usize) -> usize {
    if reservations < PARALLEL_LOAD_MIN {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Rebuilds an engine from an image given in runs of reservations (a snapshot's parts, see
/// `snapshot::part`), so that only some of its reservations are in memory as rows at a time:
/// first everything but the reservations ([`ImageLoader::new`]), then the reservations in
/// runs, each with its allocations ([`ImageLoader::add`]), then the return tickets
/// ([`ImageLoader::finish`]). The engine is the one [`Engine::from_image`] builds from the
/// whole image, and the same checks refuse an inconsistent one.
pub struct ImageLoader {
    engine: Engine,
    threads: usize,
    /// The shard of every reservation to be added, in order (worked out once, to size the
    /// tables), and how many were added.
    shards: Vec<u16>,
    added: usize,
}

impl ImageLoader {
    /// An engine with the SKUs, deleted SKUs, locations and supplies of `image` (its
    /// reservations, allocations and tickets are not read), and tables sized for the
    /// reservations with `ids` (all that will be added). Reservations are loaded on `threads`
    /// threads.
    pub fn new<'a>(
        config: EngineConfig,
        image: &Image,
        ids: impl Iterator<Item = &'a [u8]>,
        threads: usize,
    ) -> Result<ImageLoader, ImageError> {
        let engine = Engine::new(config);
        let shards = engine.reserve_for(image, ids);
        engine.load_skus(image)?;
        Ok(ImageLoader { engine, threads, shards, added: 0 })
    }

    /// Loads the reservations of `rows` (the next of those whose ids [`ImageLoader::new`] was
    /// given) and their allocations (which follow them, in their order); the SKUs, locations
    /// and supplies of `rows` are not read.
    pub fn add(&mut self, rows: &Image) -> Result<(), ImageError> {
        let end = self.added + rows.reservations.len();
        let shards = self
            .shards
            .get(self.added..end)
            .ok_or_else(|| bad("more reservations than counted"))?;
        self.engine.load_reservations(rows, shards, self.threads)?;
        self.added = end;
        Ok(())
    }

    /// Loads the return tickets: the engine is complete.
    pub fn finish(self, aftersales: &AftersalesImage) -> Result<Engine, ImageError> {
        self.engine.load_aftersales(aftersales).map_err(bad)?;
        Ok(self.engine)
    }
}

/// Why an image cannot be loaded: it is not a state the engine could have produced.
#[derive(Debug, Error)]
#[error("inconsistent state image: {0}")]
pub struct ImageError(String);

fn bad(message: impl Into<String>) -> ImageError {
    ImageError(message.into())
}

/// The SKU rows of an [`Image`] or of a capture's `Captured`, which keeps the same ones.
pub(super) struct SkuRows<'a> {
    pub skus: &'a mut Vec<SkuImage>,
    pub locations: &'a mut Vec<LocationImage>,
    pub supplies: &'a mut Vec<SupplyImage>,
    pub deleted_skus: &'a mut Vec<Vec<u8>>,
}

/// Adds one SKU's rows: the SKU, its locations, its supply; or only its id, deleted.
pub(super) fn push_sku_rows(rows: SkuRows<'_>, key: &Key, s: &Sku) {
    let SkuRows { skus, locations, supplies, deleted_skus } = rows;
    if s.deleted {
        return deleted_skus.push(key.to_vec());
    }
    skus.push(SkuImage {
        sku: key.to_vec(),
        on_hand: s.on_hand,
        safety_stock: s.safety_stock,
        limits: s.limits.as_deref().map(|l| LimitsImage::of(&l.config())),
    });
    let list = s.locations.as_deref().map_or(&[][..], |l| &l.list[..]);
    locations.extend(list.iter().map(|l| LocationImage {
        sku: key.to_vec(),
        location: l.id.to_vec(),
        priority: l.priority,
        on_hand: l.stock.on_hand,
    }));
    if let Some(supply) = s.supply.as_deref() {
        supplies.push(SupplyImage {
            sku: key.to_vec(),
            preorder_max: supply.preorder_max,
            incoming: supply
                .incoming
                .iter()
                .map(|i| IncomingImage {
                    location: i.location.as_deref().unwrap_or_default().to_vec(),
                    reference: i.reference.to_vec(),
                    qty: i.qty,
                    eta_ms: i.eta_ms,
                })
                .collect(),
        });
    }
}

/// Adds the allocation rows of reservation `id` (where its lines on SKUs with locations take
/// their units from), if it holds or has confirmed units.
pub(super) fn push_allocations(rows: &mut Vec<AllocationImage>, id: &Key, r: &Reservation) {
    if matches!(r.state, ReservationState::Held | ReservationState::Confirmed) {
        for (index, line) in r.lines.iter().enumerate() {
            rows.extend(line.at.iter().map(|(location, qty)| AllocationImage {
                id: id.to_vec(),
                line: index as u16,
                location: location.to_vec(),
                qty: *qty,
            }));
        }
    }
}

impl Image {
    /// Adds one SKU's rows: the SKU, its locations, its supply.
    pub(super) fn push_sku(&mut self, key: &Key, s: &Sku) {
        let rows = SkuRows {
            skus: &mut self.skus,
            locations: &mut self.locations,
            supplies: &mut self.supplies,
            deleted_skus: &mut self.deleted_skus,
        };
        push_sku_rows(rows, key, s);
    }

    /// Adds one reservation's rows: the reservation and, after those of the reservations
    /// added before it, its allocations (the order loading needs).
    pub(super) fn push_reservation(&mut self, id: &Key, r: &Reservation) {
        push_allocations(&mut self.allocations, id, r);
        self.reservations.push(ReservationImage {
            id: id.to_vec(),
            state: r.state as u8,
            lines: r
                .lines
                .iter()
                .map(|line| LineImage {
                    sku: line.sku.to_vec(),
                    qty: line.qty,
                    confirmed: line.confirmed,
                })
                .collect(),
            ttl_ms: r.ttl_ms,
            channel: r.channel.as_deref().unwrap_or_default().to_vec(),
            customer: r.customer.as_deref().unwrap_or_default().to_vec(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            forget_at_ms: r.forget_at_ms,
        });
    }

    /// The same state in canonical order (by id): equal states give equal images.
    pub fn sorted(mut self) -> Image {
        self.skus.sort_unstable_by(|a, b| a.sku.cmp(&b.sku));
        self.reservations.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        self.locations.sort_unstable_by(|a, b| (&a.sku, &a.location).cmp(&(&b.sku, &b.location)));
        self.supplies.sort_unstable_by(|a, b| a.sku.cmp(&b.sku));
        self.deleted_skus.sort_unstable();
        // Stable: allocations of one line keep their order.
        self.allocations.sort_by(|a, b| (&a.id, a.line).cmp(&(&b.id, b.line)));
        self
    }
}

/// Images with fewer reservations than this are loaded on the calling thread alone.
const PARALLEL_LOAD_MIN: usize = 100_000;

impl Engine {
    /// Copies the whole state, in canonical order (SKUs, reservations, locations and supplies
    /// sorted by id), so two engines in the same state give equal images: what tests and the
    /// simulator compare. Shards are read one after another, so the image is consistent only
    /// when no command runs concurrently (recovery, snapshot rebuild, shutdown, tests).
    pub fn image(&self) -> Image {
        self.snapshot_image().sorted()
    }

    /// Copies the whole state in the engine's own order: what snapshots store. Loading does
    /// not depend on the order, and sorting millions of rows by id costs about as much as
    /// copying them (`recovery-time`: 1 000 000 SKUs and 1 000 000 holds imaged in 0.65 s
    /// instead of 1.13 s). The one order loading needs holds here too: allocations come
    /// grouped by reservation, in the reservations' order. Consistent only when no command
    /// runs concurrently, as [`Engine::image`].
    pub fn snapshot_image(&self) -> Image {
        // Sized up front: growing vectors of millions of rows copies them over and over.
        let (skus, reservations) = self.counts();
        let mut image = Image {
            skus: Vec::with_capacity(skus),
            reservations: Vec::with_capacity(reservations),
            ..Image::default()
        };
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (key, sku) in shard.skus.slots() {
                image.push_sku(key, sku);
            }
            for (id, reservation) in shard.reservations.iter() {
                image.push_reservation(id, reservation);
            }
        }
        image.aftersales = self.aftersales_image();
        image
    }

    /// Rebuilds an engine from an image, checking that it is internally consistent. A large
    /// image's reservations are loaded on as many threads as the machine has cores.
    pub fn from_image(config: EngineConfig, image: &Image) -> Result<Engine, ImageError> {
        Engine::from_image_threads(config, image, load_threads(image.reservations.len()))
    }

    /// [`Engine::from_image`] with the reservations loaded on `threads` threads (at least one,
    /// at most one per shard), whatever the image's size: what it does for a large image, for
    /// tests of any size. The engine is the same for any number of threads.
    pub fn from_image_threads(
        config: EngineConfig,
        image: &Image,
        threads: usize,
    ) -> Result<Engine, ImageError> {
        let ids = image.reservations.iter().map(|r| &r.id[..]);
        let mut loader = ImageLoader::new(config, image, ids, threads)?;
        loader.add(image)?;
        loader.finish(&image.aftersales)
    }

    /// Sizes each shard's tables for the SKUs of `image` and the reservations with `ids` that
    /// fall in it, so that loading a large state never grows (rehashes and copies) them on the
    /// way. Returns each reservation's shard.
    fn reserve_for<'a>(&self, image: &Image, ids: impl Iterator<Item = &'a [u8]>) -> Vec<u16> {
        let mut skus = vec![0usize; self.shards.len()];
        let mut reservations = vec![0usize; self.shards.len()];
        for id in image.skus.iter().map(|s| &s.sku).chain(&image.deleted_skus) {
            skus[self.shard_of(id)] += 1;
        }
        let shard_of_reservation: Vec<u16> = ids
            .map(|id| {
                let shard = self.shard_of(id);
                reservations[shard] += 1;
                u16::try_from(shard).expect("at most SHARDS_MAX shards, which fit 16 bits")
            })
            .collect();
        for (shard, (skus, reservations)) in
            self.shards.iter().zip(skus.into_iter().zip(reservations))
        {
            let mut shard = shard.lock();
            shard.skus.reserve(skus);
            shard.reservations.reserve(reservations);
        }
        shard_of_reservation
    }

    /// Loads everything of `image` but its reservations (and their allocations) and return
    /// tickets: SKUs, deleted SKUs, locations, supplies.
    fn load_skus(&self, image: &Image) -> Result<(), ImageError> {
        for s in &image.skus {
            if s.sku.is_empty() {
                return Err(bad("empty SKU id"));
            }
            let mut shard = self.shards[self.shard_of(&s.sku)].lock();
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
            let mut sku = Sku { safety_stock: s.safety_stock, limits, ..Sku::default() };
            sku.counters.on_hand = s.on_hand;
            if !shard.skus.insert_new(Key::from(&s.sku[..]), sku) {
                return Err(bad(format!("SKU {:?} twice", String::from_utf8_lossy(&s.sku))));
            }
        }
        for id in &image.deleted_skus {
            if id.is_empty() {
                return Err(bad("empty SKU id"));
            }
            let mut shard = self.shards[self.shard_of(id)].lock();
            if !shard.skus.insert_new(Key::from(&id[..]), Sku { deleted: true, ..Sku::default() }) {
                return Err(bad(format!("SKU {:?} twice", String::from_utf8_lossy(id))));
            }
        }
        self.load_locations(&image.locations)?;
        for supply in &image.supplies {
            self.load_supply(supply)?;
        }
        Ok(())
    }

    /// Loads the reservations (the SKUs they name are loaded), on several threads for a large
    /// image: each shard's reservations, in the image's order, all on one thread. The shards'
    /// tables and deadline and retention indexes (with their tickets) come out exactly as one
    /// thread would build them, and what a reservation adds to its SKUs (counters, limits'
    /// counts) are sums, the same in any order. A thread holds one shard's lock at a time.
    fn load_reservations(
        &self,
        image: &Image,
        shard_of: &[u16],
        threads: usize,
    ) -> Result<(), ImageError> {
        // The allocations follow their reservations in the image's order: the ranges of those
        // that have any (few do), by reservation.
        let mut owned: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        let mut next = 0;
        for (index, r) in image.reservations.iter().enumerate() {
            let start = next;
            while image.allocations.get(next).is_some_and(|a| a.id == r.id) {
                next += 1;
            }
            if next > start {
                owned.push((index, start..next));
            }
        }
        if let Some(a) = image.allocations.get(next) {
            let id = String::from_utf8_lossy(&a.id);
            return Err(bad(format!("allocation of {id:?} out of order or of no reservation")));
        }
        let threads = threads.clamp(1, self.shards.len());
        let failed = AtomicBool::new(false);
        let load = |thread: usize| -> Result<(), ImageError> {
            let mut cursor = 0;
            for (index, r) in image.reservations.iter().enumerate() {
                let home = usize::from(shard_of[index]);
                if home % threads != thread {
                    continue;
                }
                if failed.load(Ordering::Relaxed) {
                    // Another thread found damage: the load fails with its error.
                    return Ok(());
                }
                while owned.get(cursor).is_some_and(|(at, _)| *at < index) {
                    cursor += 1;
                }
                let own: SmallVec<[&AllocationImage; 4]> = match owned.get(cursor) {
                    Some((at, range)) if *at == index => {
                        image.allocations[range.clone()].iter().collect()
                    }
                    _ => SmallVec::new(),
                };
                if let Err(e) = self.load_reservation(r, home, &own) {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(())
        };
        if threads == 1 {
            return load(0);
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = (1..threads).map(|t| scope.spawn(move || load(t))).collect();
            let mut result = load(0);
            for worker in workers {
                let joined = worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                result = result.and(joined);
            }
            result
        })
    }

    fn load_locations(&self, locations: &[LocationImage]) -> Result<(), ImageError> {
        for l in locations {
            let name = || String::from_utf8_lossy(&l.sku).into_owned();
            if l.location.is_empty() || l.location.len() > LOCATION_BYTES_MAX {
                return Err(bad(format!("SKU {:?} has a bad location id", name())));
            }
            let mut shard = self.shards[self.shard_of(&l.sku)].lock();
            let sku = shard
                .skus
                .get_mut(&l.sku[..])
                .ok_or_else(|| bad(format!("location of unknown SKU {:?}", name())))?;
            let list = &mut sku.locations.get_or_insert_with(Box::default).list;
            if list.iter().any(|x| x.id[..] == l.location[..]) {
                return Err(bad(format!("SKU {:?} has a location twice", name())));
            }
            if list.len() >= usize::from(LOCATIONS_PER_SKU_MAX) {
                return Err(bad(format!("SKU {:?} has too many locations", name())));
            }
            let stock = Counters { on_hand: l.on_hand, ..Counters::default() };
            list.push(Location { id: Key::from(&l.location[..]), priority: l.priority, stock });
            list.sort_by(|a, b| (a.priority, &a.id).cmp(&(b.priority, &b.id)));
        }
        // The SKU's count is the sum of its locations'.
        for l in locations {
            let shard = self.shards[self.shard_of(&l.sku)].lock();
            let sku = shard.skus.get(&l.sku[..]).expect("loaded above");
            let list = &sku.locations.as_deref().expect("loaded above").list;
            // Checked: counts that overflow could otherwise wrap around to the SKU's.
            let sum = list.iter().try_fold(0u64, |sum, x| sum.checked_add(x.stock.on_hand));
            if sum != Some(sku.on_hand) {
                let name = String::from_utf8_lossy(&l.sku);
                return Err(bad(format!("SKU {name:?} on hand is not the sum of its locations")));
            }
        }
        Ok(())
    }

    fn load_supply(&self, s: &SupplyImage) -> Result<(), ImageError> {
        let name = || String::from_utf8_lossy(&s.sku).into_owned();
        let mut shard = self.shards[self.shard_of(&s.sku)].lock();
        let sku = shard
            .skus
            .get_mut(&s.sku[..])
            .ok_or_else(|| bad(format!("supply of unknown SKU {:?}", name())))?;
        if sku.supply.is_some() || (s.preorder_max == 0 && s.incoming.is_empty()) {
            return Err(bad(format!("SKU {:?} has a duplicate or empty supply", name())));
        }
        if s.incoming.len() > usize::from(INCOMING_PER_SKU_MAX) {
            return Err(bad(format!("SKU {:?} has too many deliveries", name())));
        }
        let mut incoming = Vec::with_capacity(s.incoming.len());
        for i in &s.incoming {
            let location = match (&sku.locations, &i.location[..]) {
                (None, []) => None,
                (Some(locations), id) if locations.list.iter().any(|l| l.id[..] == *id) => {
                    Some(Key::from(id))
                }
                _ => return Err(bad(format!("SKU {:?} delivery at a bad location", name()))),
            };
            if i.qty == 0 || i.reference.is_empty() || i.reference.len() > REFERENCE_BYTES_MAX {
                return Err(bad(format!("SKU {:?} has a bad delivery", name())));
            }
            let reference = Key::from(&i.reference[..]);
            incoming.push(Incoming { location, reference, qty: i.qty, eta_ms: i.eta_ms });
        }
        let order = |i: &Incoming| (i.location.clone(), i.reference.clone());
        if !incoming.windows(2).all(|w| order(&w[0]) < order(&w[1])) {
            return Err(bad(format!("SKU {:?} deliveries not sorted and unique", name())));
        }
        sku.supply = Some(Box::new(Supply { preorder_max: s.preorder_max, incoming }));
        Ok(())
    }

    /// Loads one reservation into `home`, the shard of its id.
    fn load_reservation(
        &self,
        r: &ReservationImage,
        home: usize,
        allocations: &[&AllocationImage],
    ) -> Result<(), ImageError> {
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
        let counted = matches!(state, ReservationState::Held | ReservationState::Confirmed);
        let mut lines = Vec::with_capacity(r.lines.len());
        // Where each line's SKU is (shard, position), looked up once: None for a deleted SKU.
        let mut positions: SmallVec<[Option<(usize, usize)>; 4]> = SmallVec::new();
        for (index, line) in r.lines.iter().enumerate() {
            if line.qty == 0 || line.confirmed > line.qty || (!confirmed && line.confirmed != 0) {
                return Err(bad(format!("reservation {} has a bad line quantity", name())));
            }
            let shard_index = self.shard_of(&line.sku);
            let shard = self.shards[shard_index].lock();
            let Some((position, key, sku)) = shard.skus.find(&line.sku[..]) else {
                return Err(bad(format!("reservation {} names an unknown SKU", name())));
            };
            if sku.deleted {
                // A deleted SKU, named only by reservations that are over.
                if !finished || allocations.iter().any(|a| usize::from(a.line) == index) {
                    return Err(bad(format!("open reservation {} names a deleted SKU", name())));
                }
                let (qty, confirmed) = (line.qty, line.confirmed);
                lines.push(HeldLine { sku: key.clone(), qty, confirmed, at: Box::default() });
                positions.push(None);
                continue;
            }
            let mut at = Vec::new();
            for a in allocations.iter().filter(|a| usize::from(a.line) == index) {
                let location = sku
                    .locations
                    .as_deref()
                    .and_then(|l| l.list.iter().find(|l| l.id[..] == a.location[..]))
                    .ok_or_else(|| bad(format!("reservation {} at an unknown location", name())))?;
                at.push((location.id.clone(), a.qty));
            }
            let total: u64 = at.iter().map(|(_, qty)| u64::from(*qty)).sum();
            let expected = if counted && sku.locations.is_some() { u64::from(line.qty) } else { 0 };
            if total != expected || at.iter().any(|(_, qty)| *qty == 0) {
                return Err(bad(format!("reservation {} allocations do not match", name())));
            }
            let (qty, confirmed) = (line.qty, line.confirmed);
            lines.push(HeldLine { sku: key.clone(), qty, confirmed, at: at.into() });
            positions.push(Some((shard_index, position)));
        }
        if allocations.iter().any(|a| usize::from(a.line) >= r.lines.len()) {
            return Err(bad(format!("reservation {} allocation of no line", name())));
        }
        let id = Key::from(&r.id[..]);
        let channel = self.shards[home].lock().channels.tag(&r.channel);
        let customer = super::reserve::tag(&r.customer);
        let mut reservation = Reservation {
            state,
            lines: lines.into_iter().collect(),
            ttl_ms: r.ttl_ms,
            channel,
            customer,
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            forget_at_ms: r.forget_at_ms,
            ticket: 0,
        };
        for (index, ((line, image), position)) in
            reservation.lines.iter().zip(&r.lines).zip(positions).enumerate()
        {
            // A deleted SKU has nothing to count (the reservation is over).
            let Some((shard_index, position)) = position else { continue };
            let mut shard = self.shards[shard_index].lock();
            let sku = shard.skus.entry_at(position);
            match state {
                ReservationState::Held => sku.hold_line(line, r.expires_at_ms),
                ReservationState::Confirmed => sku.commit_line(line, image.confirmed),
                _ => {}
            }
            if let Some(limits) = &mut sku.limits {
                limits.count(&reservation, index);
            }
        }
        let mut shard = self.shards[home].lock();
        let shard: &mut Shard = &mut shard;
        if state == ReservationState::Held {
            reservation.ticket = shard.deadlines.insert(r.expires_at_ms, id.clone());
        }
        if finished {
            reservation.ticket = shard.retired.insert(r.forget_at_ms, id.clone());
        }
        if !shard.reservations.insert_new(id, reservation) {
            return Err(bad(format!("reservation {} twice", name())));
        }
        Ok(())
    }
}
