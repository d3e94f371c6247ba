//! The parts of a snapshot body (format version 6).
//!
//! rkyv's archives point within themselves with 32-bit relative pointers, so one archive
//! cannot span more than 2 GiB. A state image at about 110 bytes per reservation reaches that
//! at some 19 million open holds, well within a large server's memory: the snapshot could not
//! be written. So the body is a sequence of parts, each an archive of an [`Image`] of some of
//! the rows, which loading appends to each other in order:
//!
//! ```text
//! body   = part+
//! part   = archive (len bytes: rkyv archive of engine::Image)
//!          zero padding to a multiple of 16 bytes
//!          trailer: len u64 LE, index u32 LE (0, 1, ...), 4 reserved zero bytes
//! ```
//!
//! Each part starts 16-byte aligned in the body. The length follows the archive because the
//! body is written (and checksummed) as it is serialised; loading walks the trailers from the
//! end. Part `k` holds the `k`-th run of each kind of row, at most [`Caps`] rows of each, and
//! the allocations of its reservations (never those of another part's): the caps keep every
//! part under 1 GiB whatever the rows hold ([`RowBytes`] are the most a row of each kind takes
//! within the protocol's limits). The return tickets are in the first part. Appending the
//! parts in order gives back every row in the order written.
//!
//! Parts keep memory small on both sides: writing, the resolvers of a part's rows (tens of
//! bytes each) wait only while that part is written; loading, every part's SKUs, locations
//! and supplies are loaded first, then the reservations a few parts at a time (each part's
//! with their allocations, which is why they travel together), so the rows of the whole image
//! are never in memory at once beside the engine built from them.

use std::ops::Range;

use rkyv::munge::munge;
use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use crate::aftersales::AftersalesImage;
use crate::engine::image::{
    AllocationImage, ArchivedImage, ArchivedReservationImage, Image, LocationImage, SkuImage,
    SupplyImage,
};
use stockd_protocol::limits::{LINES_PER_RESERVATION_MAX, SPLIT_LOCATIONS_MAX};

/// The most bytes one row of each kind takes in an archive (its fixed part, its variable
/// parts, and their alignment), given the protocol's limits on ids, lines, quotas, locations
/// and deliveries. A unit test serialises the largest row of each kind against these.
pub struct RowBytes;

impl RowBytes {
    pub const SKU: usize = 2048;
    pub const RESERVATION: usize = 8192;
    pub const LOCATION: usize = 256;
    pub const SUPPLY: usize = 8192;
    pub const ALLOCATION: usize = 128;
    pub const DELETED_SKU: usize = 128;
    /// A reservation with the most allocations it can have: one per location a line is split
    /// over, on each of its lines.
    pub const RESERVATION_ALLOCATED: usize = RowBytes::RESERVATION
        + RowBytes::ALLOCATION * SPLIT_LOCATIONS_MAX * LINES_PER_RESERVATION_MAX as usize;
}

/// Bytes each kind of row may fill in one part, and reservations with their allocations four
/// times as much: the parts' rows and the return tickets stay well under 1 GiB.
const KIND_BYTES: usize = 128 << 20;

/// Rows of each kind in one part (a part's allocations are those of its reservations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub skus: usize,
    pub reservations: usize,
    pub locations: usize,
    pub supplies: usize,
    pub deleted_skus: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            skus: KIND_BYTES / RowBytes::SKU,
            reservations: 4 * KIND_BYTES / RowBytes::RESERVATION_ALLOCATED,
            locations: KIND_BYTES / RowBytes::LOCATION,
            supplies: KIND_BYTES / RowBytes::SUPPLY,
            deleted_skus: KIND_BYTES / RowBytes::DELETED_SKU,
        }
    }
}

/// How many rows of each kind there are, or (in a part) which.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows<T> {
    pub skus: T,
    pub reservations: T,
    pub locations: T,
    pub supplies: T,
    pub allocations: T,
    pub deleted_skus: T,
}

impl Caps {
    /// The rows of each part, given how many rows of each kind there are: the `k`-th run of
    /// each kind in part `k`, and the allocations of its reservations. `allocated` lists, for
    /// each reservation with allocations in order, its position and the end of its allocations
    /// (they come in the order of their reservations, see [`allocation_ends`]). At least one
    /// part (an empty state has one, empty).
    pub fn split(
        &self,
        lens: &Rows<usize>,
        allocated: &[(usize, usize)],
    ) -> Vec<Rows<Range<usize>>> {
        let kinds = [
            (lens.skus, self.skus),
            (lens.reservations, self.reservations),
            (lens.locations, self.locations),
            (lens.supplies, self.supplies),
            (lens.deleted_skus, self.deleted_skus),
        ];
        let parts = kinds.iter().map(|(len, cap)| len.div_ceil((*cap).max(1))).max();
        let parts = parts.unwrap_or(0).max(1);
        let run = |k: usize, len: usize, cap: usize| {
            let cap = cap.max(1);
            len.min(k * cap)..len.min((k + 1) * cap)
        };
        // Allocation rows up to the end of those of the reservations before `end`.
        let allocated_before = |end: usize| match allocated.partition_point(|(at, _)| *at < end) {
            0 => 0,
            n => allocated[n - 1].1,
        };
        let mut allocations_from = 0;
        (0..parts)
            .map(|k| {
                let reservations = run(k, lens.reservations, self.reservations);
                // The last part takes whatever is left (nothing in a consistent state).
                let allocations_to = match k + 1 == parts {
                    true => lens.allocations,
                    false => allocated_before(reservations.end).max(allocations_from),
                };
                let allocations = allocations_from..allocations_to;
                allocations_from = allocations_to;
                Rows {
                    skus: run(k, lens.skus, self.skus),
                    reservations,
                    locations: run(k, lens.locations, self.locations),
                    supplies: run(k, lens.supplies, self.supplies),
                    allocations,
                    deleted_skus: run(k, lens.deleted_skus, self.deleted_skus),
                }
            })
            .collect()
    }
}

/// For [`Caps::split`]: the reservations (of `reservations`, whose ids `id` gives) that have
/// some of `allocations` (which come grouped by reservation, in the reservations' order), each
/// with the end of its allocations. Reads no id when there are no allocations, as when no
/// SKU has locations. Allocations of no reservation are left out (loading refuses them).
pub fn allocation_ends<'a>(
    allocations: &[AllocationImage],
    reservations: usize,
    id: impl Fn(usize) -> &'a [u8],
) -> Vec<(usize, usize)> {
    let mut ends = Vec::new();
    let (mut next, mut reservation) = (0, 0);
    while next < allocations.len() && reservation < reservations {
        let owner = id(reservation);
        let start = next;
        while allocations.get(next).is_some_and(|a| a.id[..] == *owner) {
            next += 1;
        }
        if next > start {
            ends.push((reservation, next));
        }
        reservation += 1;
    }
    ends
}

/// One part: some rows of each kind, archived as an [`Image`] of them. `R` are the
/// reservations, archived as the image's rows (a slice of them, or a capture's).
pub struct ImagePart<'a, R> {
    pub skus: &'a [SkuImage],
    pub reservations: R,
    pub locations: &'a [LocationImage],
    pub supplies: &'a [SupplyImage],
    pub allocations: &'a [AllocationImage],
    pub aftersales: &'a AftersalesImage,
    pub deleted_skus: &'a [Vec<u8>],
}

impl<'a> ImagePart<'a, usize> {
    /// Cuts these rows (all of a state's, with the number of its reservations) into parts of
    /// at most `caps` rows; `allocated` as [`Caps::split`] takes it, and `reservations` the
    /// reservation rows of a range. The first part has the return tickets, the others
    /// `no_tickets`.
    pub fn cut<R>(
        &self,
        caps: &Caps,
        allocated: &[(usize, usize)],
        no_tickets: &'a AftersalesImage,
        reservations: impl Fn(Range<usize>) -> R,
    ) -> Vec<ImagePart<'a, R>> {
        let lens = Rows {
            skus: self.skus.len(),
            reservations: self.reservations,
            locations: self.locations.len(),
            supplies: self.supplies.len(),
            allocations: self.allocations.len(),
            deleted_skus: self.deleted_skus.len(),
        };
        caps.split(&lens, allocated)
            .into_iter()
            .enumerate()
            .map(|(k, rows)| ImagePart {
                skus: &self.skus[rows.skus],
                reservations: reservations(rows.reservations),
                locations: &self.locations[rows.locations],
                supplies: &self.supplies[rows.supplies],
                allocations: &self.allocations[rows.allocations],
                aftersales: if k == 0 { self.aftersales } else { no_tickets },
                deleted_skus: &self.deleted_skus[rows.deleted_skus],
            })
            .collect()
    }
}

impl Image {
    /// The parts of this image (its reservations as a slice of rows).
    pub fn parts<'a>(
        &'a self,
        caps: &Caps,
        no_tickets: &'a AftersalesImage,
    ) -> Vec<ImagePart<'a, ReservationSlice<'a>>> {
        let reservations = &self.reservations;
        let id = |i: usize| &reservations[i].id[..];
        let allocated = allocation_ends(&self.allocations, reservations.len(), id);
        let whole = ImagePart {
            skus: &self.skus,
            reservations: reservations.len(),
            locations: &self.locations,
            supplies: &self.supplies,
            allocations: &self.allocations,
            aftersales: &self.aftersales,
            deleted_skus: &self.deleted_skus,
        };
        whole.cut(caps, &allocated, no_tickets, |rows| ReservationSlice(&reservations[rows]))
    }
}

/// Reservation rows of an [`Image`], archived as its `reservations`.
pub struct ReservationSlice<'a>(&'a [crate::engine::image::ReservationImage]);

impl Archive for ReservationSlice<'_> {
    type Archived = ArchivedVec<ArchivedReservationImage>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for ReservationSlice<'_> {
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

/// Where each of a part's vectors went.
pub struct ImagePartResolver<R> {
    skus: VecResolver,
    reservations: R,
    locations: VecResolver,
    supplies: VecResolver,
    allocations: VecResolver,
    aftersales: <AftersalesImage as Archive>::Resolver,
    deleted_skus: VecResolver,
}

impl<R> Archive for ImagePart<'_, R>
where
    R: Archive<Archived = ArchivedVec<ArchivedReservationImage>>,
{
    type Archived = ArchivedImage;
    type Resolver = ImagePartResolver<R::Resolver>;

    fn resolve(&self, resolver: Self::Resolver, out: Place<ArchivedImage>) {
        munge!(let ArchivedImage {
            skus, reservations, locations, supplies, allocations, aftersales, deleted_skus,
        } = out);
        let r = resolver;
        ArchivedVec::resolve_from_len(self.skus.len(), r.skus, skus);
        self.reservations.resolve(r.reservations, reservations);
        ArchivedVec::resolve_from_len(self.locations.len(), r.locations, locations);
        ArchivedVec::resolve_from_len(self.supplies.len(), r.supplies, supplies);
        ArchivedVec::resolve_from_len(self.allocations.len(), r.allocations, allocations);
        self.aftersales.resolve(r.aftersales, aftersales);
        ArchivedVec::resolve_from_len(self.deleted_skus.len(), r.deleted_skus, deleted_skus);
    }
}

impl<S, R> Serialize<S> for ImagePart<'_, R>
where
    S: Fallible + Allocator + Writer + ?Sized,
    R: Serialize<S, Archived = ArchivedVec<ArchivedReservationImage>>,
    SkuImage: Serialize<S>,
    LocationImage: Serialize<S>,
    SupplyImage: Serialize<S>,
    AllocationImage: Serialize<S>,
    AftersalesImage: Serialize<S>,
    Vec<u8>: Serialize<S>,
{
    /// In the order of `Image`'s fields, as its derived serialiser writes them.
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok(ImagePartResolver {
            skus: ArchivedVec::serialize_from_slice(self.skus, serializer)?,
            reservations: self.reservations.serialize(serializer)?,
            locations: ArchivedVec::serialize_from_slice(self.locations, serializer)?,
            supplies: ArchivedVec::serialize_from_slice(self.supplies, serializer)?,
            allocations: ArchivedVec::serialize_from_slice(self.allocations, serializer)?,
            aftersales: self.aftersales.serialize(serializer)?,
            deleted_skus: ArchivedVec::serialize_from_slice(self.deleted_skus, serializer)?,
        })
    }
}

/// Bytes of a part's trailer.
pub const TRAILER_BYTES: usize = 16;

/// A part's trailer.
pub fn trailer(len: u64, index: u32) -> [u8; TRAILER_BYTES] {
    let mut trailer = [0u8; TRAILER_BYTES];
    trailer[0..8].copy_from_slice(&len.to_le_bytes());
    trailer[8..12].copy_from_slice(&index.to_le_bytes());
    trailer
}

/// Zero bytes after an archive of `len` bytes, up to a multiple of 16.
pub fn padding(len: usize) -> usize {
    len.next_multiple_of(16) - len
}

/// The archives of a body's parts, in order: where each starts and its length. An error says
/// what is wrong with the framing.
pub fn archives(body: &[u8]) -> Result<Vec<Range<usize>>, String> {
    // Every part is a multiple of 16 bytes, so each starts as aligned as the body.
    if body.len() % 16 != 0 {
        return Err(format!("a body of {} bytes, not a whole number of parts", body.len()));
    }
    let mut found = Vec::new();
    let mut end = body.len();
    while end > 0 {
        let trailer = end
            .checked_sub(TRAILER_BYTES)
            .map(|at| &body[at..end])
            .ok_or_else(|| format!("{end} bytes before a part's trailer of 16"))?;
        let len = u64::from_le_bytes(trailer[0..8].try_into().expect("8 bytes"));
        let index = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes"));
        let len = usize::try_from(len).map_err(|_| "part length overflows".to_string())?;
        let start = len
            .checked_next_multiple_of(16)
            .and_then(|padded| (end - TRAILER_BYTES).checked_sub(padded))
            .ok_or_else(|| format!("part of {len} bytes does not fit before its trailer"))?;
        found.push((index, start..start + len));
        end = start;
    }
    if found.is_empty() {
        return Err("no parts".into());
    }
    found.reverse();
    for (k, (index, _)) in found.iter().enumerate() {
        if *index as usize != k {
            return Err(format!("part {k} is numbered {index}"));
        }
    }
    Ok(found.into_iter().map(|(_, range)| range).collect())
}

impl Image {
    /// Adds the rows of a later part of the same snapshot.
    pub fn append(&mut self, part: Image) {
        let Image {
            skus,
            reservations,
            locations,
            supplies,
            allocations,
            aftersales,
            deleted_skus,
        } = part;
        self.skus.extend(skus);
        self.reservations.extend(reservations);
        self.locations.extend(locations);
        self.supplies.extend(supplies);
        self.allocations.extend(allocations);
        self.aftersales.tickets.extend(aftersales.tickets);
        self.aftersales.parcels.extend(aftersales.parcels);
        self.aftersales.next_seq = self.aftersales.next_seq.max(aftersales.next_seq);
        self.deleted_skus.extend(deleted_skus);
    }
}

#[cfg(test)]
mod tests {
    use rkyv::rancor;
    use stockd_protocol::limits::{
        ID_BYTES_MAX, INCOMING_PER_SKU_MAX, LINES_PER_RESERVATION_MAX, LOCATION_BYTES_MAX,
        QUOTAS_PER_SKU_MAX, REFERENCE_BYTES_MAX, SKU_BYTES_MAX, TAG_BYTES_MAX,
    };

    use super::*;
    use crate::engine::image::{
        IncomingImage, LimitsImage, LineImage, QuotaImage, ReservationImage,
    };

    /// Bytes one more row of `row` adds to an archived vector of them (padding included).
    fn row_bytes<T>(row: T) -> usize
    where
        T: Clone
            + for<'a> Serialize<
                rkyv::api::high::HighSerializer<
                    rkyv::util::AlignedVec,
                    rkyv::ser::allocator::ArenaHandle<'a>,
                    rancor::Error,
                >,
            >,
    {
        let one = rkyv::to_bytes::<rancor::Error>(&vec![row.clone()]).expect("serialise");
        let two = rkyv::to_bytes::<rancor::Error>(&vec![row.clone(), row]).expect("serialise");
        two.len() - one.len()
    }

    #[test]
    fn the_largest_row_of_each_kind_fits_its_bound() {
        let bytes = |n: usize| vec![b'x'; n];
        let sku = bytes(SKU_BYTES_MAX);
        let quota = QuotaImage { channel: bytes(TAG_BYTES_MAX), kind: 0, value: u64::MAX };
        let limits = LimitsImage {
            max_per_buyer: u32::MAX,
            shared_pool: true,
            quotas: vec![quota; usize::from(QUOTAS_PER_SKU_MAX)],
        };
        let row = SkuImage { sku: sku.clone(), on_hand: 1, safety_stock: 1, limits: Some(limits) };
        assert!(row_bytes(row) <= RowBytes::SKU);
        let line = LineImage { sku: sku.clone(), qty: 1, confirmed: 1 };
        let row = ReservationImage {
            id: bytes(ID_BYTES_MAX),
            state: 1,
            lines: vec![line; usize::from(LINES_PER_RESERVATION_MAX)],
            ttl_ms: 1,
            channel: bytes(TAG_BYTES_MAX),
            customer: bytes(TAG_BYTES_MAX),
            created_at_ms: 1,
            expires_at_ms: 1,
            forget_at_ms: 1,
        };
        assert!(row_bytes(row) <= RowBytes::RESERVATION);
        let location = bytes(LOCATION_BYTES_MAX);
        let row =
            LocationImage { sku: sku.clone(), location: location.clone(), priority: 1, on_hand: 1 };
        assert!(row_bytes(row) <= RowBytes::LOCATION);
        let incoming = IncomingImage {
            location: location.clone(),
            reference: bytes(REFERENCE_BYTES_MAX),
            qty: 1,
            eta_ms: 1,
        };
        let incoming = vec![incoming; usize::from(INCOMING_PER_SKU_MAX)];
        let row = SupplyImage { sku: sku.clone(), preorder_max: 1, incoming };
        assert!(row_bytes(row) <= RowBytes::SUPPLY);
        let row = AllocationImage { id: bytes(ID_BYTES_MAX), line: 1, location, qty: 1 };
        assert!(row_bytes(row) <= RowBytes::ALLOCATION);
        assert!(row_bytes(sku) <= RowBytes::DELETED_SKU);
    }

    #[test]
    fn every_part_fits_well_inside_an_archive() {
        let caps = Caps::default();
        let worst = caps.skus * RowBytes::SKU
            + caps.reservations * RowBytes::RESERVATION_ALLOCATED
            + caps.locations * RowBytes::LOCATION
            + caps.supplies * RowBytes::SUPPLY
            + caps.deleted_skus * RowBytes::DELETED_SKU;
        assert!(worst <= 1 << 30, "{worst}");
        assert!(caps.reservations >= 10_000, "{caps:?}");
    }

    #[test]
    fn rows_are_split_into_runs_one_per_part_with_their_allocations() {
        let caps = Caps { skus: 2, reservations: 3, locations: 1, supplies: 5, deleted_skus: 1 };
        let lens = Rows {
            skus: 5,
            reservations: 7,
            locations: 0,
            supplies: 1,
            allocations: 9,
            deleted_skus: 0,
        };
        // Reservations 1, 4 and 5 have allocations: 2, 4 and 3 of them.
        let allocated = [(1, 2), (4, 6), (5, 9)];
        let parts = caps.split(&lens, &allocated);
        assert_eq!(parts.len(), 3);
        let skus: Vec<_> = parts.iter().map(|p| p.skus.clone()).collect();
        assert_eq!(skus, [0..2, 2..4, 4..5]);
        let reservations: Vec<_> = parts.iter().map(|p| p.reservations.clone()).collect();
        assert_eq!(reservations, [0..3, 3..6, 6..7]);
        let allocations: Vec<_> = parts.iter().map(|p| p.allocations.clone()).collect();
        assert_eq!(allocations, [0..2, 2..9, 9..9]);
        assert!(parts.iter().all(|p| p.locations.is_empty() && p.deleted_skus.is_empty()));
        // An empty state is one empty part.
        let empty = caps.split(&Rows::default(), &[]);
        assert_eq!(empty, [Rows::<Range<usize>>::default()]);
    }

    #[test]
    fn allocation_ends_follow_the_reservations_that_have_allocations() {
        let allocation = |id: &str| AllocationImage {
            id: id.as_bytes().to_vec(),
            line: 0,
            location: b"east".to_vec(),
            qty: 1,
        };
        let ids = ["a", "b", "c", "d"];
        let allocations = [allocation("b"), allocation("b"), allocation("d")];
        let ends = allocation_ends(&allocations, ids.len(), |i| ids[i].as_bytes());
        assert_eq!(ends, [(1, 2), (3, 3)]);
        assert!(allocation_ends(&[], ids.len(), |_| unreachable!("no id read")).is_empty());
        // An allocation of no reservation ends the walk; loading refuses it.
        let stray = [allocation("a"), allocation("zz")];
        assert_eq!(allocation_ends(&stray, ids.len(), |i| ids[i].as_bytes()), [(0, 1)]);
    }
}
