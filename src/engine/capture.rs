//! Capturing the live state for a snapshot without stopping traffic and without a second copy
//! of the state.
//!
//! A capture images the engine as it was at one instant, the **cut**, while commands go on
//! changing it:
//!
//! 1. **The cut.** [`Engine::capture`] takes the return tickets' lock and every shard's lock
//!    (the global lock order), so no command is half applied; it notes in each shard how many
//!    SKUs and reservation slots it has, runs the caller's `at_cut` (the server reads the log's
//!    last LSN there: every command applied so far has logged its record, and none after it
//!    has), and lets go of the shards. Traffic stops only for the locking and a small
//!    allocation per shard. The return tickets, which change only under their own lock, are
//!    copied before that lock is let go too.
//! 2. **Copying.** [`Capture::step`] goes on with the current shard, about a thousand entries
//!    per lock hold: it images SKUs under the lock, and takes a reference to each reservation
//!    (they are shared, `Arc`, and changed copy-on-write), which is read only when the snapshot
//!    is written ([`Captured`](super::Captured)): a reservation changed after that copies
//!    itself, and the captured one stays as it was at the cut. An
//!    entry at a position the capture has not reached yet may change before it gets there:
//!    the first change (through the one accessor every change goes through: `Skus::get_mut` /
//!    `get_or_insert`, `Reservations::get_mut` / `remove`) first saves the entry as it still
//!    is, that is as it was at the cut, in the shard's [`Copying`]: a SKU as image rows, a
//!    reservation as a reference (the change then copies it). The capture skips saved
//!    entries when it reaches them and takes the saved ones instead when it finishes the
//!    shard. Entries added after the cut sit at or past the noted end and are never read.
//!    Positions stay put while a shard is being copied: SKUs are never removed, and a
//!    reservation forgotten meanwhile leaves an empty slot (`Reservations`).
//! 3. **Finishing a shard** adds its saved entries, stops the saving and drops the empty
//!    slots. Changes to a finished shard cost nothing more.
//!
//! The result is the state at the cut: every entry that existed then is imaged exactly once,
//! either as read (unchanged since the cut) or as saved (before its first change), and no
//! entry added later is. Commands that span shards changed all of them under one set of
//! locks, on one side of the cut. What traffic pays meanwhile is one saved entry per entry
//! first changed ahead of the capture (and, for a reservation the capture holds a reference
//! to, a copy when it changes); entries behind it or in finished shards cost nothing.
//!
//! One capture runs at a time (the snapshotter's); dropping a [`Capture`] before it finishes
//! ends the saving in every shard it had not finished.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::shard::SavedReservations;
use super::{Captured, Engine};

/// Entries per step (per lock hold).
const STEP_ENTRIES: usize = 1024;

/// What a shard's SKUs or reservations keep for a running capture (see the module doc):
/// how far it got, and the entries saved as they were at the cut (`T`: image rows for SKUs,
/// shared references for reservations).
#[derive(Debug)]
pub(super) struct Copying<T> {
    /// Entries at positions below this were imaged already.
    next: usize,
    /// Entries at or past this position were added after the cut.
    end: usize,
    /// Entries changed ahead of the capture, a bit per position below `end` (empty until the
    /// first): they are in `saved` as they were at the cut. By position, not by key: positions
    /// stay put while the shard is copied, and the capture then tells a saved entry from an
    /// unsaved one without hashing its key (reading the key, rarely in cache, and hashing it
    /// for every entry was an eighth of the snapshotter's time over a million SKUs).
    saved_at: Vec<u64>,
    saved: T,
}

impl<T: Default> Copying<T> {
    fn new(end: usize) -> Box<Copying<T>> {
        Box::new(Copying { next: 0, end, saved_at: Vec::new(), saved: T::default() })
    }

    /// The entry at `index` is about to change or go: saves it as it is (`save` adds it to
    /// the saved entries) if the capture still needs it as it is.
    pub fn before_change(&mut self, index: usize, save: impl FnOnce(&mut T)) {
        if (self.next..self.end).contains(&index) && !self.saved(index) {
            if self.saved_at.is_empty() {
                self.saved_at = vec![0; self.end.div_ceil(64)];
            }
            self.saved_at[index / 64] |= 1 << (index % 64);
            save(&mut self.saved);
        }
    }

    /// Moves the position on by up to `entries`; the positions to image.
    fn advance(&mut self, entries: usize) -> (usize, usize) {
        let from = self.next;
        self.next = self.end.min(from + entries);
        (from, self.next)
    }

    fn done(&self) -> bool {
        self.next == self.end
    }

    /// Whether the entry at `index` (below `end`) was saved.
    fn saved(&self, index: usize) -> bool {
        self.saved_at.get(index / 64).is_some_and(|word| word & (1 << (index % 64)) != 0)
    }
}

/// A running capture of the state (see the module doc). [`Capture::finish`] completes it.
pub struct Capture<'e> {
    engine: &'e Engine,
    /// The shard being copied (all done when past the last).
    shard: usize,
    captured: Captured,
}

impl Engine {
    /// Starts a capture of the state as it is now. `at_cut` runs at the cut, while nothing
    /// changes (it must not call into this engine); its value is returned beside the capture.
    /// Panics if a capture is running already.
    pub fn capture<T>(&self, at_cut: impl FnOnce() -> T) -> (Capture<'_>, T) {
        let running = self.capturing.swap(true, Ordering::AcqRel);
        assert!(!running, "one capture at a time");
        let aftersales = self.aftersales.lock();
        let mut shards: Vec<_> = self.shards.iter().map(|shard| shard.lock()).collect();
        // Counted to size the image up front: growing vectors of millions of rows copies them
        // over and over.
        let (mut skus, mut reservations) = (0, 0);
        for shard in shards.iter_mut() {
            skus += shard.skus.len();
            reservations += shard.reservations.len();
            shard.skus.copying = Some(Copying::new(shard.skus.len()));
            shard.reservations.copying = Some(Copying::new(shard.reservations.slots()));
        }
        let value = at_cut();
        drop(shards);
        // Tickets change only under their own lock, still held: copied as they were at the cut.
        let mut captured = Captured::with_capacity(skus, reservations);
        captured.aftersales = aftersales.image();
        drop(aftersales);
        (Capture { engine: self, shard: 0, captured }, value)
    }
}

impl Capture<'_> {
    /// Captures up to about a thousand more entries (see [`Capture::step_by`]). True when the
    /// capture is complete.
    pub fn step(&mut self) -> bool {
        self.step_by(STEP_ENTRIES)
    }

    /// Captures up to `entries` more entries (at least one) of the current shard: SKUs are
    /// imaged under its lock, reservations kept by reference (read when the snapshot is
    /// written, see `captured`). True when the capture is complete.
    pub fn step_by(&mut self, entries: usize) -> bool {
        let entries = entries.max(1);
        let Some(shard) = self.engine.shards.get(self.shard) else { return true };
        let mut guard = shard.lock();
        let shard = &mut *guard;
        let (from, to) = copying(&mut shard.skus.copying).advance(entries);
        let skus = shard.skus.copying.as_deref().expect("copying this shard");
        for (index, (key, sku)) in (from..to).zip(shard.skus.slots()[from..to].iter()) {
            if !skus.saved(index) {
                self.captured.push_sku(key, sku);
            }
        }
        let taken = to - from;
        let (from, to) = copying(&mut shard.reservations.copying).advance(entries - taken);
        let reservations = shard.reservations.copying.as_deref().expect("copying this shard");
        let slots = shard.reservations.slots_in(from..to);
        // Each reservation is behind a pointer into memory rarely in cache: reading them all
        // first (its count, which the reference taken below changes) lets those loads overlap
        // instead of waiting for each in turn.
        for (_, key, reservation) in slots.clone() {
            std::hint::black_box((key.first(), Arc::strong_count(reservation)));
        }
        let mut held: SavedReservations = slots
            .filter(|(index, ..)| !reservations.saved(*index))
            .map(|(_, key, reservation)| (key.clone(), reservation.clone()))
            .collect();
        let finished = skus.done() && reservations.done();
        if finished {
            let skus = shard.skus.copying.take().expect("copying this shard");
            let reservations = shard.reservations.copying.take().expect("copying this shard");
            self.captured.append_skus(skus.saved);
            held.extend(reservations.saved);
            shard.reservations.compact();
            self.shard += 1;
        }
        drop(guard);
        for (key, reservation) in held {
            self.captured.push_reservation(key, reservation);
        }
        self.shard == self.engine.shards.len()
    }

    /// Completes the capture: the state at the cut.
    pub fn finish(mut self) -> Captured {
        while !self.step() {}
        std::mem::take(&mut self.captured)
    }
}

/// The running capture's part of a shard.
fn copying<T>(copying: &mut Option<Box<Copying<T>>>) -> &mut Copying<T> {
    copying.as_deref_mut().expect("copying this shard")
}

impl Drop for Capture<'_> {
    fn drop(&mut self) {
        for shard in &self.engine.shards[self.shard.min(self.engine.shards.len())..] {
            let mut shard = shard.lock();
            shard.skus.copying = None;
            shard.reservations.copying = None;
            shard.reservations.compact();
        }
        self.engine.capturing.store(false, Ordering::Release);
    }
}
