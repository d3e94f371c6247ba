//! What a capture hands the snapshot writer: the state at the cut, serialised as the parts of
//! the [`Image`] of that state (the same bytes) without first building an `Image` of the
//! reservations.
//!
//! SKUs are imaged as rows while the capture holds their shard's lock, as before. Reservations
//! are kept as the shared references the capture took ([`ReservationRows`]): each is read
//! once, while it is serialised, straight from the reservation as it was at the cut. An
//! `Image` of millions of reservations was four or five small allocations per reservation,
//! built, serialised and freed, and the largest part of what a snapshot held in memory. The
//! allocations of lines on SKUs with locations (rare) are still imaged as rows when taken.

use std::cell::RefCell;
use std::sync::Arc;

use rkyv::munge::munge;
use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Writer, WriterExt};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use super::image::{
    AllocationImage, ArchivedLineImage, ArchivedReservationImage, Image, LocationImage, SkuImage,
    SupplyImage,
};
use super::shard::{HeldLine, Key, Reservation};
use crate::aftersales::AftersalesImage;
use crate::snapshot::part::{Caps, ImagePart};

/// The state at a capture's cut, written as the parts of the [`Image`] of that state (see
/// `snapshot::part`).
#[derive(Default)]
pub struct Captured {
    pub skus: Vec<SkuImage>,
    pub reservations: ReservationRows,
    pub locations: Vec<LocationImage>,
    pub supplies: Vec<SupplyImage>,
    pub allocations: Vec<AllocationImage>,
    pub aftersales: AftersalesImage,
    pub deleted_skus: Vec<Vec<u8>>,
}

/// Reservations as they were at the cut, by reference; archived as the image's rows.
#[derive(Default)]
pub struct ReservationRows {
    rows: Vec<(Key, Arc<Reservation>)>,
    /// The rows with allocations, each with the end of its allocations in `allocations`.
    allocated: Vec<(usize, usize)>,
}

impl Captured {
    pub(super) fn with_capacity(skus: usize, reservations: usize) -> Captured {
        Captured {
            skus: Vec::with_capacity(skus),
            reservations: ReservationRows {
                rows: Vec::with_capacity(reservations),
                allocated: Vec::new(),
            },
            ..Captured::default()
        }
    }

    /// Adds the rows of an image of SKUs (a shard's SKUs saved before they changed).
    pub(super) fn append_skus(&mut self, image: Image) {
        debug_assert!(image.reservations.is_empty() && image.allocations.is_empty());
        self.skus.extend(image.skus);
        self.locations.extend(image.locations);
        self.supplies.extend(image.supplies);
        self.deleted_skus.extend(image.deleted_skus);
    }

    /// Adds one SKU's rows.
    pub(super) fn push_sku(&mut self, key: &Key, sku: &super::shard::Sku) {
        let rows = super::image::SkuRows {
            skus: &mut self.skus,
            locations: &mut self.locations,
            supplies: &mut self.supplies,
            deleted_skus: &mut self.deleted_skus,
        };
        super::image::push_sku_rows(rows, key, sku);
    }

    /// Adds a reservation as it is now (it is shared: it stays so, as later changes copy it),
    /// and its allocations after those of the reservations added before it.
    pub(super) fn push_reservation(&mut self, id: Key, reservation: Arc<Reservation>) {
        let before = self.allocations.len();
        super::image::push_allocations(&mut self.allocations, &id, &reservation);
        let rows = &mut self.reservations;
        if self.allocations.len() > before {
            rows.allocated.push((rows.rows.len(), self.allocations.len()));
        }
        rows.rows.push((id, reservation));
    }

    /// The parts to write: the same as those of the [`Image`] of this state.
    pub fn parts<'a>(
        &'a self,
        caps: &Caps,
        no_tickets: &'a AftersalesImage,
    ) -> Vec<ImagePart<'a, CapturedRows<'a>>> {
        let rows = &self.reservations.rows;
        let whole = ImagePart {
            skus: &self.skus,
            reservations: rows.len(),
            locations: &self.locations,
            supplies: &self.supplies,
            allocations: &self.allocations,
            aftersales: &self.aftersales,
            deleted_skus: &self.deleted_skus,
        };
        let allocated = &self.reservations.allocated;
        whole.cut(caps, allocated, no_tickets, |range| CapturedRows(&rows[range]))
    }

    /// The same state as an [`Image`] (tests compare captures with the engine's image).
    pub fn into_image(self) -> Image {
        let mut image = Image {
            skus: self.skus,
            locations: self.locations,
            supplies: self.supplies,
            aftersales: self.aftersales,
            deleted_skus: self.deleted_skus,
            ..Image::default()
        };
        for (id, reservation) in &self.reservations.rows {
            image.push_reservation(id, reservation);
        }
        debug_assert_eq!(image.allocations, self.allocations);
        image
    }
}

/// Rows touched at a time ahead of their serialisation.
const TOUCH_ROWS: usize = 64;

/// Some of a capture's reservation rows, archived as an image's `reservations`.
pub struct CapturedRows<'a>(&'a [(Key, Arc<Reservation>)]);

impl CapturedRows<'_> {
    /// Reads a little of each of the rows from `from` on, level by level (reservations, their
    /// lines, their ids): each is behind a pointer into memory rarely in cache, and loads that
    /// do not wait for each other overlap. Returns where it stopped. (Not the lines' SKU ids: a
    /// hot SKU's sits beside a reference count other cores keep writing, see `SkuCopies`.)
    fn touch(&self, from: usize) -> usize {
        let to = self.0.len().min(from + TOUCH_ROWS);
        let rows = &self.0[from..to];
        for (_, r) in rows {
            std::hint::black_box(r.lines.len());
        }
        for (_, r) in rows {
            std::hint::black_box(r.lines.first().map(|line| line.qty));
        }
        for (id, _) in rows {
            std::hint::black_box(id.first());
        }
        to
    }
}

impl Archive for CapturedRows<'_> {
    type Archived = ArchivedVec<ArchivedReservationImage>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for CapturedRows<'_> {
    /// As `ArchivedVec::serialize_from_iter` does, rows are serialised in a first pass (their
    /// ids, lines and tags) and written in a second from their resolvers alone, which read
    /// nothing of the reservations again (long out of the cache by then). The resolvers wait
    /// in a vector of exactly their number rather than in the serialiser's scratch arena,
    /// whose blocks are powers of two.
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        let copies = RefCell::new(SkuCopies::default());
        let mut resolvers = Vec::with_capacity(self.0.len());
        let mut touched = 0;
        for (i, (id, r)) in self.0.iter().enumerate() {
            // Ahead of each run of rows, each is touched once.
            if i >= touched {
                touched = self.touch(i);
            }
            resolvers.push(ReservationRow { id, r, copies: &copies }.serialize(serializer)?);
        }
        let pos = serializer.align_for::<ArchivedReservationImage>()?;
        for resolver in resolvers {
            // SAFETY: aligned for the rows just above, each one's size on from there; the
            // resolver is what serialising that row returned.
            unsafe { serializer.resolve_aligned(&ResolvedRow, resolver)? };
        }
        Ok(VecResolver::from_pos(pos))
    }
}

/// Private copies of the SKU ids that runs of reservation lines repeat. A line's SKU id sits
/// beside a reference count that other cores keep writing while they reserve the SKU, so
/// reading a hot SKU's id for every line would miss the cache each time; a copy of it is read
/// instead from its second line on. An id that does not repeat is read where it is.
#[derive(Default)]
struct SkuCopies {
    /// Where the last id's bytes are (the same address is the same id: every id compared is
    /// kept alive by a captured reservation), and its copy once it repeated.
    last: Option<(*const u8, Option<Arc<[u8]>>)>,
}

/// A line's SKU id: where it is, or a private copy.
enum SkuBytes<'a> {
    Key(&'a [u8]),
    Copy(Arc<[u8]>),
}

impl SkuBytes<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            SkuBytes::Key(bytes) => bytes,
            SkuBytes::Copy(copy) => copy,
        }
    }
}

impl SkuCopies {
    fn bytes<'a>(&mut self, key: &'a Key) -> SkuBytes<'a> {
        // The address alone: neither the bytes nor the count beside them are read.
        let at = key.as_ptr();
        match &mut self.last {
            Some((last, copy)) if *last == at => {
                SkuBytes::Copy(copy.get_or_insert_with(|| Arc::from(&key[..])).clone())
            }
            _ => {
                self.last = Some((at, None));
                SkuBytes::Key(key)
            }
        }
    }
}

/// One reservation, serialised as an [`ArchivedReservationImage`]'s parts.
struct ReservationRow<'a> {
    id: &'a Key,
    r: &'a Reservation,
    copies: &'a RefCell<SkuCopies>,
}

/// Where a row's parts were written and how long each is, and everything else the row holds:
/// all its resolution needs (see `ResolvedRow`). 64 bytes.
struct ReservationRowResolver {
    id: (VecResolver, u32),
    lines: (VecResolver, u32),
    channel: (VecResolver, u32),
    customer: (VecResolver, u32),
    ttl_ms: u32,
    state: u8,
    created_at_ms: u64,
    expires_at_ms: u64,
    forget_at_ms: u64,
}

const _: () = assert!(std::mem::size_of::<ReservationRowResolver>() <= 64);

/// Serialises a byte string: where it went, and its length.
fn bytes<S: Fallible + Allocator + Writer + ?Sized>(
    bytes: &[u8],
    serializer: &mut S,
) -> Result<(VecResolver, u32), S::Error> {
    // Ids and tags are at most 255 bytes (the protocol's limit).
    let len = u32::try_from(bytes.len()).expect("ids and tags are short");
    Ok((ArchivedVec::serialize_from_slice(bytes, serializer)?, len))
}

impl ReservationRow<'_> {
    fn serialize<S: Fallible + Allocator + Writer + ?Sized>(
        &self,
        serializer: &mut S,
    ) -> Result<ReservationRowResolver, S::Error> {
        let r = self.r;
        let lines = LineRows { lines: &r.lines, copies: self.copies };
        let lines_len = u32::try_from(r.lines.len()).expect("a reservation's lines are few");
        Ok(ReservationRowResolver {
            id: bytes(self.id, serializer)?,
            lines: (lines.serialize(serializer)?, lines_len),
            channel: bytes(r.channel.as_deref().unwrap_or_default(), serializer)?,
            customer: bytes(r.customer.as_deref().unwrap_or_default(), serializer)?,
            ttl_ms: r.ttl_ms,
            state: r.state as u8,
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            forget_at_ms: r.forget_at_ms,
        })
    }
}

/// A row written from its resolver alone.
struct ResolvedRow;

impl Archive for ResolvedRow {
    type Archived = ArchivedReservationImage;
    type Resolver = ReservationRowResolver;

    fn resolve(&self, resolver: ReservationRowResolver, out: Place<Self::Archived>) {
        munge!(let ArchivedReservationImage {
            id, state, lines, ttl_ms, channel, customer, created_at_ms, expires_at_ms,
            forget_at_ms,
        } = out);
        let r = resolver;
        let vec = |(at, len): (VecResolver, u32), out| {
            ArchivedVec::<u8>::resolve_from_len(len as usize, at, out)
        };
        vec(r.id, id);
        r.state.resolve((), state);
        ArchivedVec::resolve_from_len(r.lines.1 as usize, r.lines.0, lines);
        r.ttl_ms.resolve((), ttl_ms);
        vec(r.channel, channel);
        vec(r.customer, customer);
        r.created_at_ms.resolve((), created_at_ms);
        r.expires_at_ms.resolve((), expires_at_ms);
        r.forget_at_ms.resolve((), forget_at_ms);
    }
}

/// A reservation's lines, archived as its image's `Vec<LineImage>`.
struct LineRows<'a> {
    lines: &'a [HeldLine],
    copies: &'a RefCell<SkuCopies>,
}

impl Archive for LineRows<'_> {
    type Archived = ArchivedVec<ArchivedLineImage>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.lines.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for LineRows<'_> {
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        let rows = self.lines.iter().map(|line| LineRow {
            sku: self.copies.borrow_mut().bytes(&line.sku),
            qty: line.qty,
            confirmed: line.confirmed,
        });
        ArchivedVec::<ArchivedLineImage>::serialize_from_iter::<LineRow<'_>, _, S>(rows, serializer)
    }
}

/// One line, archived as an [`ArchivedLineImage`].
struct LineRow<'a> {
    sku: SkuBytes<'a>,
    qty: u32,
    confirmed: u32,
}

impl Archive for LineRow<'_> {
    type Archived = ArchivedLineImage;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        munge!(let ArchivedLineImage { sku, qty, confirmed } = out);
        ArchivedVec::resolve_from_len(self.sku.bytes().len(), resolver, sku);
        self.qty.resolve((), qty);
        self.confirmed.resolve((), confirmed);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for LineRow<'_> {
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.sku.bytes(), serializer)
    }
}
