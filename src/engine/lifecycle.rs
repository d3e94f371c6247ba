//! What happens to a reservation after `reserve`: confirm (full or partial), release, extend,
//! ship, expiry and forgetting. Touching a hold that is past its deadline expires it first, so
//! the outcome never depends on whether the sweep has run yet.

use std::iter;

use smallvec::SmallVec;
use stockd_protocol::{Confirm, ExtendReply, Line, ReservationState, ResultCode};

use super::reserve::normalize;
use super::shard::{Key, Locked, Reservation, Sku};
use super::Engine;

/// Confirmed quantity per stored line for a confirm request (no lines = everything).
fn confirm_amounts(reservation: &Reservation, lines: &[Line]) -> Result<Box<[u32]>, ResultCode> {
    if lines.is_empty() {
        return Ok(reservation.lines.iter().map(|line| line.qty).collect());
    }
    let requested = normalize(lines, true).map_err(|_| ResultCode::InvalidArgument)?;
    let mut amounts = vec![0u32; reservation.lines.len()].into_boxed_slice();
    for line in requested {
        let index = reservation
            .lines
            .binary_search_by(|held| held.sku[..].cmp(line.sku))
            .map_err(|_| ResultCode::InvalidArgument)?;
        if line.qty > reservation.lines[index].qty {
            return Err(ResultCode::InvalidArgument);
        }
        amounts[index] = line.qty;
    }
    if amounts.iter().all(|qty| *qty == 0) {
        return Err(ResultCode::InvalidArgument);
    }
    Ok(amounts)
}

/// Whether two reservations name the same SKUs.
fn same_skus(a: &Reservation, b: &Reservation) -> bool {
    std::ptr::eq(a, b)
        || a.lines.len() == b.lines.len()
            && a.lines.iter().zip(b.lines.iter()).all(|(a, b)| a.sku == b.sku)
}

/// The code for an operation that needs a live hold but found a finished reservation.
fn finished_code(state: ReservationState) -> ResultCode {
    match state {
        ReservationState::Held => unreachable!("a held reservation is not finished"),
        ReservationState::Confirmed => ResultCode::AlreadyConfirmed,
        ReservationState::Released => ResultCode::AlreadyReleased,
        ReservationState::Expired => ResultCode::Expired,
        ReservationState::Shipped => ResultCode::AlreadyShipped,
    }
}

impl Engine {
    /// Locks the shard of reservation `id` and the shards of all its SKUs, in order. `None` if
    /// there is no such reservation.
    fn lock_reservation(&self, id: &[u8]) -> Option<(Locked<'_>, usize)> {
        let res_shard = self.shard_of(id);
        loop {
            let (seen, shards) = {
                let shard = self.shards[res_shard].lock();
                let (_, reservation) = shard.reservations.shared(id)?;
                let shards: SmallVec<[usize; 8]> = reservation
                    .lines
                    .iter()
                    .map(|line| self.shard_of(&line.sku))
                    .chain(iter::once(res_shard))
                    .collect();
                (reservation, shards)
            };
            let mut locked = self.lock(shards);
            match locked.shard(res_shard).reservations.get(id) {
                None => return None,
                // The SKUs a reservation names never change: the same SKUs are locked. (Not
                // always the same allocation: a change between the two locks copies it, as
                // `seen` shares it.)
                Some(r) if same_skus(r, &seen) => return Some((locked, res_shard)),
                // Forgotten and re-created between the two locks with other SKUs.
                Some(_) => continue,
            }
        }
    }

    /// The counters of a SKU a stored reservation names. Its entry is never removed; it may
    /// be deleted (`Sku::deleted`) if the reservation is over, and then only its limits are
    /// looked at (none: they went with it) when a shipped reservation is forgotten.
    fn reserved_sku<'l>(&self, locked: &'l mut Locked<'_>, sku: &[u8]) -> &'l mut Sku {
        let shard = locked.shard(self.shard_of(sku));
        shard.skus.entry_for_reservation(sku).expect("a named SKU's entry is never removed")
    }

    /// Ends the hold of reservation `id` in state `to`: held units go back to stock, except the
    /// `confirmed` ones, which become committed.
    pub(super) fn end_hold(
        &self,
        locked: &mut Locked<'_>,
        res_shard: usize,
        id: &[u8],
        to: ReservationState,
        confirmed: Option<&[u32]>,
        now_ms: u64,
    ) {
        let (key, r) = locked.shard(res_shard).reservations.shared(id).expect("locked");
        let key = key.clone();
        assert_eq!(r.state, ReservationState::Held, "only a hold can end");
        let (expires_at_ms, tags) = (r.expires_at_ms, r.counted());
        for (index, line) in r.lines.iter().enumerate() {
            let sku = self.reserved_sku(locked, &line.sku);
            sku.unhold_line(line, expires_at_ms);
            let bought = confirmed.map(|confirmed| confirmed[index]);
            if let Some(bought) = bought {
                sku.commit_line(line, bought);
            }
            if let Some(limits) = &mut sku.limits {
                limits.unhold(&tags, expires_at_ms, line.qty);
                if let Some(bought) = bought {
                    limits.commit(&tags, bought);
                }
            }
        }
        drop(r);
        let shard = locked.shard(res_shard);
        let reservation = shard.reservations.get_mut(id).expect("locked");
        shard.deadlines.remove(expires_at_ms, reservation.ticket);
        reservation.state = to;
        if let Some(confirmed) = confirmed {
            for (line, bought) in reservation.lines.iter_mut().zip(confirmed) {
                line.confirmed = *bought;
            }
        }
        if to != ReservationState::Confirmed {
            self.retire(locked, res_shard, key, now_ms);
        }
    }

    /// Schedules a finished reservation to be forgotten after the retention period (the
    /// longer return window for a shipped one).
    fn retire(&self, locked: &mut Locked<'_>, res_shard: usize, key: Key, now_ms: u64) {
        let shard = locked.shard(res_shard);
        let shipped = shard.reservations[&key[..]].state == ReservationState::Shipped;
        let retention_ms =
            if shipped { self.config.shipped_retention_ms } else { self.config.retention_ms };
        let forget_at_ms = now_ms.saturating_add(retention_ms);
        let shard = locked.shard(res_shard);
        let ticket = shard.retired.insert(forget_at_ms, key.clone());
        let reservation = shard.reservations.get_mut(&key[..]).expect("locked");
        (reservation.forget_at_ms, reservation.ticket) = (forget_at_ms, ticket);
    }

    pub(super) fn confirm(
        &self,
        request: &Confirm,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> ResultCode {
        let Some((mut locked, res_shard)) = self.lock_reservation(&request.id) else {
            return ResultCode::NotFound;
        };
        let reservation = &locked.shard(res_shard).reservations[&request.id[..]];
        if reservation.lapsed(now_ms) {
            self.end_hold(
                &mut locked,
                res_shard,
                &request.id,
                ReservationState::Expired,
                None,
                now_ms,
            );
            on_change();
            return ResultCode::Expired;
        }
        let amounts = match confirm_amounts(reservation, &request.lines) {
            Ok(amounts) => amounts,
            Err(code) => return code,
        };
        match reservation.state {
            ReservationState::Held => {
                self.end_hold(
                    &mut locked,
                    res_shard,
                    &request.id,
                    ReservationState::Confirmed,
                    Some(&amounts),
                    now_ms,
                );
                on_change();
                ResultCode::Ok
            }
            // A retry of the confirm that succeeded is idempotent; different quantities are not.
            ReservationState::Confirmed | ReservationState::Shipped
                if reservation
                    .lines
                    .iter()
                    .map(|line| line.confirmed)
                    .eq(amounts.iter().copied()) =>
            {
                ResultCode::Ok
            }
            ReservationState::Confirmed | ReservationState::Shipped => ResultCode::AlreadyConfirmed,
            state => finished_code(state),
        }
    }

    pub(super) fn release(&self, id: &[u8], now_ms: u64, on_change: impl FnOnce()) -> ResultCode {
        let Some((mut locked, res_shard)) = self.lock_reservation(id) else {
            return ResultCode::NotFound;
        };
        let reservation = &locked.shard(res_shard).reservations[id];
        let (to, code) = match reservation.state {
            ReservationState::Held if reservation.lapsed(now_ms) => {
                (ReservationState::Expired, ResultCode::Expired)
            }
            ReservationState::Held => (ReservationState::Released, ResultCode::Ok),
            // Release retries are idempotent.
            ReservationState::Released => return ResultCode::Ok,
            state => return finished_code(state),
        };
        self.end_hold(&mut locked, res_shard, id, to, None, now_ms);
        on_change();
        code
    }

    pub(super) fn extend(
        &self,
        id: &[u8],
        ttl_ms: u32,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> ExtendReply {
        let refused = |code| ExtendReply { code, expires_at_ms: 0 };
        let Some(ttl_ms) = self.resolve_ttl(ttl_ms) else {
            return refused(ResultCode::InvalidArgument);
        };
        let Some((mut locked, res_shard)) = self.lock_reservation(id) else {
            return refused(ResultCode::NotFound);
        };
        let reservation = &locked.shard(res_shard).reservations[id];
        if reservation.lapsed(now_ms) {
            self.end_hold(&mut locked, res_shard, id, ReservationState::Expired, None, now_ms);
            on_change();
            return refused(ResultCode::Expired);
        }
        if reservation.state != ReservationState::Held {
            return refused(finished_code(reservation.state));
        }
        // Never beyond the maximum hold from creation, and never shorter than the current hold.
        let limit_ms = reservation.created_at_ms.saturating_add(self.config.hold_ms_max);
        let old_ms = reservation.expires_at_ms;
        let new_ms = (now_ms + ttl_ms).min(limit_ms).max(old_ms);
        if new_ms == old_ms {
            return ExtendReply { code: ResultCode::Ok, expires_at_ms: old_ms };
        }
        let tags = reservation.counted();
        let (key, r) = locked.shard(res_shard).reservations.shared(id).expect("locked");
        let key = key.clone();
        for line in r.lines.iter() {
            let sku = self.reserved_sku(&mut locked, &line.sku);
            sku.rehold_line(line, old_ms, new_ms);
            if let Some(limits) = &mut sku.limits {
                limits.unhold(&tags, old_ms, line.qty);
                limits.hold(&tags, new_ms, line.qty);
            }
        }
        drop(r);
        let shard = locked.shard(res_shard);
        let reservation = shard.reservations.get_mut(id).expect("locked");
        shard.deadlines.remove(old_ms, reservation.ticket);
        reservation.ticket = shard.deadlines.insert(new_ms, key);
        reservation.expires_at_ms = new_ms;
        on_change();
        ExtendReply { code: ResultCode::Ok, expires_at_ms: new_ms }
    }

    pub(super) fn ship(&self, id: &[u8], now_ms: u64, on_change: impl FnOnce()) -> ResultCode {
        let Some((mut locked, res_shard)) = self.lock_reservation(id) else {
            return ResultCode::NotFound;
        };
        let reservation = &locked.shard(res_shard).reservations[id];
        match reservation.state {
            ReservationState::Held if reservation.lapsed(now_ms) => {
                self.end_hold(&mut locked, res_shard, id, ReservationState::Expired, None, now_ms);
                on_change();
                return ResultCode::Expired;
            }
            ReservationState::Held => return ResultCode::NotConfirmed,
            ReservationState::Shipped => return ResultCode::Ok,
            ReservationState::Confirmed => {}
            state => return finished_code(state),
        }
        let tags = reservation.counted();
        let (key, r) = locked.shard(res_shard).reservations.shared(id).expect("locked");
        let key = key.clone();
        for line in r.lines.iter() {
            let sku = self.reserved_sku(&mut locked, &line.sku);
            if let Some(limits) = &mut sku.limits {
                limits.ship(&tags, line.confirmed);
            }
            sku.ship_line(line, line.confirmed);
        }
        drop(r);
        locked.shard(res_shard).reservations.get_mut(id).expect("locked").state =
            ReservationState::Shipped;
        self.retire(&mut locked, res_shard, key, now_ms);
        on_change();
        ResultCode::Ok
    }

    /// Expires a hold past its deadline (the sweep's command).
    pub(super) fn expire(&self, id: &[u8], now_ms: u64, on_change: impl FnOnce()) -> ResultCode {
        let Some((mut locked, res_shard)) = self.lock_reservation(id) else {
            return ResultCode::NotFound;
        };
        if !locked.shard(res_shard).reservations[id].lapsed(now_ms) {
            return ResultCode::InvalidArgument;
        }
        self.end_hold(&mut locked, res_shard, id, ReservationState::Expired, None, now_ms);
        on_change();
        ResultCode::Ok
    }

    /// Drops a finished reservation past its retention (the sweep's command).
    ///
    /// A shipped reservation's units stop counting against its buyer's limit here, so its SKUs
    /// are locked too.
    pub(super) fn forget(&self, id: &[u8], now_ms: u64, on_change: impl FnOnce()) -> ResultCode {
        let Some((mut locked, res_shard)) = self.lock_reservation(id) else {
            return ResultCode::NotFound;
        };
        let reservation = locked.shard(res_shard).reservations.get(id).expect("locked");
        let forget_at_ms = reservation.forget_at_ms;
        if forget_at_ms == 0 || forget_at_ms > now_ms {
            return ResultCode::InvalidArgument;
        }
        if reservation.state == ReservationState::Shipped {
            let tags = reservation.counted();
            let (_, r) = locked.shard(res_shard).reservations.shared(id).expect("locked");
            for line in r.lines.iter() {
                if let Some(limits) = &mut self.reserved_sku(&mut locked, &line.sku).limits {
                    limits.forget(&tags, line.confirmed);
                }
            }
        }
        let shard = locked.shard(res_shard);
        let reservation = shard.reservations.remove(id).expect("locked");
        shard.retired.remove(forget_at_ms, reservation.ticket);
        on_change();
        ResultCode::Ok
    }
}
