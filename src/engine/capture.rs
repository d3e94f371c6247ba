//! Capturing the live state for a snapshot without stopping traffic and without a second copy
//! of the state.
//!
//! A capture images the engine as it was at one instant, the **cut**, while commands go on
//! changing it:
//!
//! 1. **The cut.** [`Engine::capture`] takes the return tickets' lock and every shard's lock
//!    (the global lock order), so no command is half applied; it copies the return tickets
//!    (small), notes in each shard how many SKUs and reservation slots it has, runs the
//!    caller's `at_cut` (the server reads the log's last LSN there: every command applied so
//!    far has logged its record, and none after it has), and lets go. This stops traffic for
//!    about a microsecond per shard.
//! 2. **Copying.** [`Capture::step`] images the next few hundred SKUs or reservation slots of
//!    the current shard under its lock, and lets go between steps. An entry at a position the
//!    capture has not reached yet may change before it gets there: the first change (through
//!    the one accessor every change goes through: `Skus::get_mut` / `get_or_insert`,
//!    `Reservations::get_mut` / `remove`) first saves the entry's image as it still is, that
//!    is as it was at the cut, in the shard's [`Copying`]. The capture skips saved entries
//!    when it reaches them and takes the saved images instead when it finishes the shard.
//!    Entries added after the cut sit at or past the noted end and are never read. Positions
//!    stay put while a shard is being copied: SKUs are never removed, and a reservation
//!    forgotten meanwhile leaves an empty slot (`Reservations`).
//! 3. **Finishing a shard** appends its saved images, stops the saving and drops the empty
//!    slots. Changes to a finished shard cost nothing more.
//!
//! The result is the state at the cut: every entry that existed then is imaged exactly once,
//! either as read (unchanged since the cut) or as saved (before its first change), and no
//! entry added later is. Commands that span shards changed all of them under one set of
//! locks, on one side of the cut. What traffic pays meanwhile is one saved image per entry
//! first changed ahead of the capture; entries behind it or in finished shards cost nothing.
//!
//! One capture runs at a time (the snapshotter's); dropping a [`Capture`] before it finishes
//! ends the saving in every shard it had not finished.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use super::shard::Key;
use super::{Engine, Image};

/// Entries imaged per step (per lock hold).
const STEP_ENTRIES: usize = 1024;

/// What a shard's SKUs or reservations keep for a running capture (see the module doc).
#[derive(Debug)]
pub(super) struct Copying {
    /// Entries at positions below this were imaged already.
    next: usize,
    /// Entries at or past this position were added after the cut.
    end: usize,
    /// Entries changed ahead of the capture: their images at the cut are in `saved`.
    saved_keys: HashSet<Key, ahash::RandomState>,
    saved: Image,
}

impl Copying {
    fn new(end: usize) -> Box<Copying> {
        Box::new(Copying { next: 0, end, saved_keys: HashSet::default(), saved: Image::default() })
    }

    /// The entry at `index` (with `key`) is about to change or go: saves its current image
    /// (`image` pushes it) if the capture still needs it as it is.
    pub fn before_change(&mut self, index: usize, key: &Key, image: impl FnOnce(&mut Image)) {
        if (self.next..self.end).contains(&index) && !self.saved_keys.contains(key) {
            self.saved_keys.insert(key.clone());
            image(&mut self.saved);
        }
    }
}

/// A running capture of the state (see the module doc). [`Capture::finish`] completes it.
pub struct Capture<'e> {
    engine: &'e Engine,
    /// The shard being copied (all done when past the last).
    shard: usize,
    image: Image,
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
        // Sized up front: growing vectors of millions of rows copies them over and over.
        let skus = shards.iter().map(|shard| shard.skus.len()).sum();
        let reservations = shards.iter().map(|shard| shard.reservations.len()).sum();
        for shard in shards.iter_mut() {
            shard.skus.copying = Some(Copying::new(shard.skus.len()));
            shard.reservations.copying = Some(Copying::new(shard.reservations.slots()));
        }
        let value = at_cut();
        let image = Image {
            skus: Vec::with_capacity(skus),
            reservations: Vec::with_capacity(reservations),
            aftersales: aftersales.image(),
            ..Image::default()
        };
        drop(shards);
        drop(aftersales);
        (Capture { engine: self, shard: 0, image }, value)
    }
}

impl Capture<'_> {
    /// Images up to a few hundred more entries under one shard lock. True when the capture is
    /// complete.
    pub fn step(&mut self) -> bool {
        self.step_by(STEP_ENTRIES)
    }

    /// Images up to `entries` more entries (at least one) under one shard lock. True when the
    /// capture is complete.
    pub fn step_by(&mut self, entries: usize) -> bool {
        let entries = entries.max(1);
        let Some(shard) = self.engine.shards.get(self.shard) else { return true };
        let mut guard = shard.lock();
        let shard = &mut *guard;
        let image = &mut self.image;
        let (from, to) = advance(&mut shard.skus.copying, entries);
        let saved = &shard.skus.copying.as_deref().expect("copying this shard").saved_keys;
        for (key, sku) in shard.skus.as_slice()[from..to].iter() {
            if saved.is_empty() || !saved.contains(key) {
                image.push_sku(key, sku);
            }
        }
        let (from, to) = advance(&mut shard.reservations.copying, entries - (to - from));
        let saved = &shard.reservations.copying.as_deref().expect("copying this shard").saved_keys;
        // Reading a reservation follows pointers (to it, its id, its lines, their SKU ids)
        // into memory that is rarely in cache. Touching each level for the whole step first
        // lets those loads overlap instead of waiting for them one at a time.
        for (key, reservation) in shard.reservations.slots_in(from..to) {
            std::hint::black_box((key.first(), reservation.state));
        }
        for (_, reservation) in shard.reservations.slots_in(from..to) {
            std::hint::black_box(reservation.lines.first().map(|line| line.sku.first()));
        }
        for (key, reservation) in shard.reservations.slots_in(from..to) {
            if saved.is_empty() || !saved.contains(key) {
                image.push_reservation(key, reservation);
            }
        }
        let done =
            |copying: &Option<Box<Copying>>| copying.as_deref().is_some_and(|c| c.next == c.end);
        if done(&shard.skus.copying) && done(&shard.reservations.copying) {
            let skus = shard.skus.copying.take().expect("copying this shard");
            let reservations = shard.reservations.copying.take().expect("copying this shard");
            image.append(skus.saved);
            image.append(reservations.saved);

            shard.reservations.compact();
            self.shard += 1;
        }
        // Fairly: an operation waiting for this shard goes before the next step takes it again.
        MutexGuard::unlock_fair(guard);
        self.shard == self.engine.shards.len()
    }

    /// Completes the capture: the state at the cut.
    pub fn finish(mut self) -> Image {
        while !self.step() {}
        std::mem::take(&mut self.image)
    }
}

/// Moves `copying`'s position on by up to `entries`; the positions to image.
fn advance(copying: &mut Option<Box<Copying>>, entries: usize) -> (usize, usize) {
    let copying = copying.as_deref_mut().expect("copying this shard");
    let from = copying.next;
    copying.next = copying.end.min(from + entries);
    (from, copying.next)
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
