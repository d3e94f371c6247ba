//! What a capture hands the snapshot writer: the state at the cut, serialised as an
//! [`ArchivedImage`] (the snapshot format is the image's, unchanged) without first building
//! an [`Image`] of the reservations.
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
use rkyv::ser::{Allocator, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::{ArchiveWith, SerializeWith};
use rkyv::{Archive, Place, Serialize};

use super::image::{
    AllocationImage, ArchivedImage, ArchivedLineImage, ArchivedReservationImage, Image,
    LocationImage, SharedIds, SkuImage, SupplyImage,
};
use super::shard::{HeldLine, Key, Reservation};
use crate::aftersales::AftersalesImage;

/// The state at a capture's cut, serialised exactly as the [`Image`] of that state.
#[derive(Archive, Serialize, Default)]
#[rkyv(as = ArchivedImage)]
pub struct Captured {
    pub skus: Vec<SkuImage>,
    pub reservations: ReservationRows,
    pub locations: Vec<LocationImage>,
    pub supplies: Vec<SupplyImage>,
    pub allocations: Vec<AllocationImage>,
    pub aftersales: AftersalesImage,
}

/// Reservations as they were at the cut, by reference; archived as the image's rows.
#[derive(Default)]
pub struct ReservationRows {
    rows: Vec<(Key, Arc<Reservation>)>,
}

impl Captured {
    pub(super) fn with_capacity(skus: usize, reservations: usize) -> Captured {
        Captured {
            skus: Vec::with_capacity(skus),
            reservations: ReservationRows { rows: Vec::with_capacity(reservations) },
            ..Captured::default()
        }
    }

    /// Adds the rows of an image of SKUs (a shard's SKUs saved before they changed).
    pub(super) fn append_skus(&mut self, image: Image) {
        debug_assert!(image.reservations.is_empty() && image.allocations.is_empty());
        self.skus.extend(image.skus);
        self.locations.extend(image.locations);
        self.supplies.extend(image.supplies);
    }

    /// Adds one SKU's rows.
    pub(super) fn push_sku(&mut self, key: &Key, sku: &super::shard::Sku) {
        let mut rows = Image::default();
        rows.push_sku(key, sku);
        self.append_skus(rows);
    }

    /// Adds a reservation as it is now (it is shared: it stays so, as later changes copy it),
    /// and its allocations after those of the reservations added before it.
    pub(super) fn push_reservation(&mut self, id: Key, reservation: Arc<Reservation>) {
        super::image::push_allocations(&mut self.allocations, &id, &reservation);
        self.reservations.rows.push((id, reservation));
    }

    pub fn reservations(&self) -> usize {
        self.reservations.rows.len()
    }

    /// The same state as an [`Image`] (tests compare captures with the engine's image).
    pub fn into_image(self) -> Image {
        let mut image = Image {
            skus: self.skus,
            locations: self.locations,
            supplies: self.supplies,
            aftersales: self.aftersales,
            ..Image::default()
        };
        let mut shared = SharedIds::default();
        for (id, reservation) in &self.reservations.rows {
            image.push_reservation(id, reservation, &mut shared);
        }
        debug_assert_eq!(image.allocations, self.allocations);
        image
    }
}

impl Archive for ReservationRows {
    type Archived = ArchivedVec<ArchivedReservationImage>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.rows.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for ReservationRows {
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        let copies = RefCell::new(SkuCopies::default());
        let rows = self.rows.iter().map(|(id, r)| ReservationRow::new(id, r, &copies));
        ArchivedVec::<ArchivedReservationImage>::serialize_from_iter::<ReservationRow<'_>, _, S>(
            rows, serializer,
        )
    }
}

/// Private copies of the SKU ids reservation lines name, one per run of equal ids. A line's
/// SKU id sits beside a reference count that other cores keep writing while they reserve the
/// SKU, so reading a hot id for every line would miss the cache each time.
#[derive(Default)]
struct SkuCopies {
    last: Option<(Key, Arc<[u8]>)>,
}

impl SkuCopies {
    fn copy(&mut self, key: &Key) -> Arc<[u8]> {
        match &self.last {
            Some((last, copy)) if Arc::ptr_eq(last, key) => copy.clone(),
            _ => {
                let copy: Arc<[u8]> = Arc::from(&key[..]);
                self.last = Some((key.clone(), copy.clone()));
                copy
            }
        }
    }
}

/// One reservation, archived as an [`ArchivedReservationImage`].
struct ReservationRow<'a> {
    id: &'a Key,
    r: &'a Reservation,
    copies: &'a RefCell<SkuCopies>,
}

impl<'a> ReservationRow<'a> {
    fn new(id: &'a Key, r: &'a Reservation, copies: &'a RefCell<SkuCopies>) -> ReservationRow<'a> {
        ReservationRow { id, r, copies }
    }

    fn lines(&self) -> LineRows<'a> {
        LineRows { lines: &self.r.lines, confirmed: &self.r.confirmed, copies: self.copies }
    }

    fn channel(&self) -> &'a [u8] {
        self.r.channel.as_deref().unwrap_or_default()
    }

    fn customer(&self) -> &'a [u8] {
        self.r.customer.as_deref().unwrap_or_default()
    }
}

struct ReservationRowResolver {
    id: VecResolver,
    lines: VecResolver,
    channel: VecResolver,
    customer: VecResolver,
}

impl Archive for ReservationRow<'_> {
    type Archived = ArchivedReservationImage;
    type Resolver = ReservationRowResolver;

    fn resolve(&self, resolver: ReservationRowResolver, out: Place<Self::Archived>) {
        munge!(let ArchivedReservationImage {
            id, state, lines, ttl_ms, channel, customer, created_at_ms, expires_at_ms,
            forget_at_ms,
        } = out);
        let r = self.r;
        ArchivedVec::resolve_from_len(self.id.len(), resolver.id, id);
        (r.state as u8).resolve((), state);
        ArchivedVec::resolve_from_len(r.lines.len(), resolver.lines, lines);
        r.ttl_ms.resolve((), ttl_ms);
        ArchivedVec::resolve_from_len(self.channel().len(), resolver.channel, channel);
        ArchivedVec::resolve_from_len(self.customer().len(), resolver.customer, customer);
        r.created_at_ms.resolve((), created_at_ms);
        r.expires_at_ms.resolve((), expires_at_ms);
        r.forget_at_ms.resolve((), forget_at_ms);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for ReservationRow<'_> {
    fn serialize(&self, serializer: &mut S) -> Result<ReservationRowResolver, S::Error> {
        Ok(ReservationRowResolver {
            id: ArchivedVec::serialize_from_slice(&self.id[..], serializer)?,
            lines: self.lines().serialize(serializer)?,
            channel: ArchivedVec::serialize_from_slice(self.channel(), serializer)?,
            customer: ArchivedVec::serialize_from_slice(self.customer(), serializer)?,
        })
    }
}

/// A reservation's lines, archived as its image's `Vec<LineImage>`.
struct LineRows<'a> {
    lines: &'a [HeldLine],
    confirmed: &'a [u32],
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
        let rows = self.lines.iter().enumerate().map(|(i, line)| LineRow {
            sku: self.copies.borrow_mut().copy(&line.sku),
            qty: line.qty,
            confirmed: self.confirmed.get(i).copied().unwrap_or(0),
        });
        ArchivedVec::<ArchivedLineImage>::serialize_from_iter::<LineRow, _, S>(rows, serializer)
    }
}

/// One line, archived as an [`ArchivedLineImage`].
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedLineImage)]
struct LineRow {
    #[rkyv(with = AsBytes)]
    sku: Arc<[u8]>,
    qty: u32,
    confirmed: u32,
}

/// Archives a line's copy of its SKU id as the `Vec<u8>` the image holds.
struct AsBytes;

impl ArchiveWith<Arc<[u8]>> for AsBytes {
    type Archived = ArchivedVec<u8>;
    type Resolver = VecResolver;

    fn resolve_with(field: &Arc<[u8]>, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(field.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> SerializeWith<Arc<[u8]>, S> for AsBytes {
    fn serialize_with(field: &Arc<[u8]>, serializer: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::serialize_from_slice(&field[..], serializer)
    }
}
