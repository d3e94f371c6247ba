//! `reserve`: validate, lock the reservation's shard and every SKU's shard, check every line,
//! and only then change anything. A rejection (sold out, paused, unknown SKU) returns before the
//! first change and never calls `on_change`: nothing is logged for it.

use bytes::Bytes;
use smallvec::SmallVec;
use stockd_protocol::{Allocation, Line, ReservationState, Reserve, ReserveReply, ResultCode};

use super::limits::Counted;
use super::locations::{Allocated, Placement};
use super::shard::{HeldLine, Key, Lines, Reservation};
use super::Engine;

/// A request line after sorting by SKU and merging duplicates.
pub(super) struct NormalLine<'a> {
    pub sku: &'a [u8],
    pub qty: u32,
    /// Index of the SKU's first line in the request, reported when the line fails.
    pub first_index: u16,
}

/// Sorts lines by SKU and sums duplicates. Errors name the offending request line.
pub(super) fn normalize(lines: &[Line], allow_zero: bool) -> Result<Vec<NormalLine<'_>>, u16> {
    let mut out: Vec<NormalLine<'_>> = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let index = index as u16;
        if line.sku.is_empty() || (line.qty == 0 && !allow_zero) {
            return Err(index);
        }
        out.push(NormalLine { sku: &line.sku, qty: line.qty, first_index: index });
    }
    out.sort_by(|a, b| a.sku.cmp(b.sku).then(a.first_index.cmp(&b.first_index)));
    let mut merged: Vec<NormalLine<'_>> = Vec::with_capacity(out.len());
    for line in out {
        match merged.last_mut() {
            Some(last) if last.sku == line.sku => {
                last.qty = last.qty.checked_add(line.qty).ok_or(line.first_index)?;
            }
            _ => merged.push(line),
        }
    }
    Ok(merged)
}

/// A reservation's tag (customer) as stored: none for an empty one.
pub(super) fn tag(bytes: &[u8]) -> Option<Key> {
    (!bytes.is_empty()).then(|| Key::from(bytes))
}

/// A reserve's reply and, if asked for, where its lines were taken from.
pub(super) type Reserved = (ReserveReply, Vec<Allocation>);

fn rejected(code: ResultCode, failed_line: Option<u16>) -> Reserved {
    (ReserveReply { code, failed_line, expires_at_ms: 0 }, Vec::new())
}

/// The allocations of stored lines, reported at the request index of each SKU's first line.
fn allocations(held: &[HeldLine], lines: &[NormalLine<'_>]) -> Vec<Allocation> {
    held.iter()
        .zip(lines)
        .flat_map(|(held, line)| {
            held.at.iter().map(|(location, qty)| Allocation {
                line: line.first_index,
                location: Bytes::copy_from_slice(location),
                qty: *qty,
            })
        })
        .collect()
}

impl Reservation {
    /// Whether a retried reserve asks for exactly what this reservation holds.
    fn same_request(&self, request: &Reserve, lines: &[NormalLine<'_>]) -> bool {
        self.ttl_ms == request.ttl_ms
            && self.channel.as_deref().unwrap_or_default() == &request.channel[..]
            && self.customer.as_deref().unwrap_or_default() == &request.customer[..]
            && self.lines.len() == lines.len()
            && self.lines.iter().zip(lines).all(|(a, b)| &a.sku[..] == b.sku && a.qty == b.qty)
    }
}

impl Engine {
    /// Resolves a requested TTL (0 = default) against the configured maximum.
    pub(super) fn resolve_ttl(&self, ttl_ms: u32) -> Option<u64> {
        let ttl_ms = if ttl_ms == 0 { self.config.ttl_ms_default } else { ttl_ms };
        (u64::from(ttl_ms) <= self.config.hold_ms_max).then_some(u64::from(ttl_ms))
    }

    /// Reserves every line or none. `placement` says where stock is taken from on SKUs with
    /// locations; the allocations are returned when `report` is set (`RESERVE_AT`). A retry
    /// returns the original allocations whatever placement it asks for.
    pub(super) fn reserve(
        &self,
        request: &Reserve,
        placement: Placement<'_>,
        report: bool,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Reserved {
        self.reserve_then(request, placement, report, false, now_ms, on_change)
    }

    /// Like `reserve`, and with `confirm` set the new hold is confirmed in full under the same
    /// locks, so nothing can come between (an exchange's replacement). A reservation that
    /// already exists is answered as a retry, unchanged.
    pub(super) fn reserve_then(
        &self,
        request: &Reserve,
        placement: Placement<'_>,
        report: bool,
        confirm: bool,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Reserved {
        if request.id.is_empty() || request.lines.is_empty() {
            return rejected(ResultCode::InvalidArgument, None);
        }
        let Some(ttl_ms) = self.resolve_ttl(request.ttl_ms) else {
            return rejected(ResultCode::InvalidArgument, None);
        };
        let lines = match normalize(&request.lines, false) {
            Ok(lines) => lines,
            Err(index) => return rejected(ResultCode::InvalidArgument, Some(index)),
        };
        let res_shard = self.shard_of(&request.id);
        let sku_shards: SmallVec<[usize; 8]> =
            lines.iter().map(|line| self.shard_of(line.sku)).collect();
        let mut locked = self.lock(sku_shards.iter().copied().chain([res_shard]).collect());

        if let Some(existing) = locked.shard(res_shard).reservations.get(&request.id[..]) {
            return if existing.same_request(request, &lines) {
                let reply = ReserveReply {
                    code: ResultCode::Ok,
                    failed_line: None,
                    expires_at_ms: existing.expires_at_ms,
                };
                let at = if report { allocations(&existing.lines, &lines) } else { Vec::new() };
                (reply, at)
            } else {
                rejected(ResultCode::IdConflict, None)
            };
        }

        // Every check before the first change: all lines or none. The reported line is the
        // first one in request order that cannot be served.
        let mut keys: SmallVec<[(usize, Key, Allocated); 4]> = SmallVec::with_capacity(lines.len());
        let mut failure: Option<(u16, ResultCode)> = None;
        for (line, shard) in lines.iter().zip(&sku_shards) {
            let checked = match locked.shard(*shard).skus.find_live(line.sku) {
                None => Err(ResultCode::UnknownSku),
                Some((index, key, sku)) => {
                    let qty = u64::from(line.qty);
                    sku.check_take(qty, now_ms)
                        .and_then(|()| match sku.limits.as_deref() {
                            Some(limits) => {
                                limits.check(sku, &request.channel, &request.customer, qty, now_ms)
                            }
                            None => Ok(()),
                        })
                        .and_then(|()| sku.allocate(line.qty, placement, now_ms))
                        .map(|at| keys.push((index, key.clone(), at)))
                }
            };
            if let Err(code) = checked {
                if failure.is_none_or(|(index, _)| line.first_index < index) {
                    failure = Some((line.first_index, code));
                }
            }
        }
        if let Some((index, code)) = failure {
            return rejected(code, Some(index));
        }

        let expires_at_ms = now_ms + ttl_ms;
        let channel = locked.shard(res_shard).channels.tag(&request.channel);
        let tags = Counted { channel, customer: tag(&request.customer) };
        let positions: SmallVec<[usize; 4]> = keys.iter().map(|(index, ..)| *index).collect();
        let held: Lines = lines
            .iter()
            .zip(keys)
            .map(|(line, (_, sku, at))| HeldLine {
                sku,
                qty: line.qty,
                confirmed: 0,
                at: at.into_iter().collect(),
            })
            .collect();
        for ((line, shard), index) in held.iter().zip(&sku_shards).zip(positions) {
            let sku = locked.shard(*shard).skus.entry_at(index);
            sku.hold_line(line, expires_at_ms);
            if let Some(limits) = &mut sku.limits {
                limits.hold(&tags, expires_at_ms, line.qty);
            }
        }
        let at = if report { allocations(&held, &lines) } else { Vec::new() };
        // Only an exchange's replacement pays for this; a plain reserve allocates nothing more.
        let confirmed: Option<Box<[u32]>> =
            confirm.then(|| held.iter().map(|line| line.qty).collect());
        let id: Key = Key::from(&request.id[..]);
        let shard = locked.shard(res_shard);
        let ticket = shard.deadlines.insert(expires_at_ms, id.clone());
        let added = shard.reservations.insert_new(
            id,
            Reservation {
                state: ReservationState::Held,
                lines: held,
                ttl_ms: request.ttl_ms,
                channel: tags.channel,
                customer: tags.customer,
                created_at_ms: now_ms,
                expires_at_ms,
                forget_at_ms: 0,
                ticket,
            },
        );
        debug_assert!(added, "the id was checked to be new");
        if confirmed.is_some() {
            let state = ReservationState::Confirmed;
            self.end_hold(&mut locked, res_shard, &request.id, state, confirmed.as_deref(), now_ms);
        }
        on_change();
        (ReserveReply { code: ResultCode::Ok, failed_line: None, expires_at_ms }, at)
    }
}
