//! The engine's side of after-sales (`crate::aftersales`): a new ticket is checked against its
//! order's confirmed lines, an inspection puts restockable units back on hand, an exchange
//! makes a confirmed replacement reservation, all under the locks of what they read and
//! change, with `on_change` (the log append) called under them too. The log therefore orders
//! each ticket step exactly where it happened among the stock operations, and replay repeats
//! it.
//!
//! Lock order: the tickets' mutex first, then shards in ascending order. Nothing takes the
//! tickets' mutex while holding a shard.

use bytes::Bytes;
use smallvec::SmallVec;
use stockd_protocol::{Line as WireLine, ReservationState, Reserve, ResultCode};

use super::locations::Placement;
use super::shard::Sku;
use super::Engine;
use crate::aftersales::{
    self, Aftersales, AftersalesCommand, AftersalesImage, Inspection, Line, Scanned, Sold, Step,
    Ticket, TicketError,
};

/// The channel tag of exchange replacements.
pub const REPLACEMENT_CHANNEL: &str = "aftersales";

/// What an after-sales command did.
#[derive(Debug)]
pub enum Outcome {
    /// `created` is false for an idempotent repeat (nothing changed).
    Opened {
        ticket: Ticket,
        created: bool,
    },
    Moved(Ticket),
    Scanned(Scanned),
}

fn stock_refused(sku: &str, code: ResultCode) -> TicketError {
    TicketError::Stock { sku: sku.to_string(), code: code.name() }
}

impl Engine {
    /// Applies an after-sales command. `on_change` runs (under the locks) if and only if the
    /// state changed; an error changes nothing.
    pub fn aftersales(
        &self,
        command: &AftersalesCommand,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Result<Outcome, TicketError> {
        aftersales::check_command(command)?;
        let mut state = self.aftersales.lock();
        match command {
            AftersalesCommand::Open(open) => {
                // The order's shard stays locked until the record is logged: the ticket is
                // checked against the reservation as the log orders them.
                let shard = self.shards[self.shard_of(open.order.as_bytes())].lock();
                let sold = match shard.reservations.get(open.order.as_bytes()) {
                    None => Sold::Unknown,
                    Some(reservation) => {
                        let info = reservation.info(now_ms);
                        match info.state {
                            ReservationState::Confirmed | ReservationState::Shipped => Sold::Lines(
                                info.lines
                                    .iter()
                                    .map(|l| {
                                        (
                                            String::from_utf8_lossy(&l.sku).into_owned(),
                                            l.qty_confirmed,
                                        )
                                    })
                                    .collect(),
                            ),
                            other => Sold::Not(other.name()),
                        }
                    }
                };
                let (ticket, created) = state.open(open, sold, now_ms)?;
                if created {
                    on_change();
                }
                Ok(Outcome::Opened { ticket, created })
            }
            AftersalesCommand::Move { ticket, step, actor, note } => {
                let customer = state.check_move(ticket, step)?.customer.clone();
                match step {
                    Step::Inspected { lines } => self.restock(lines, on_change)?,
                    Step::Exchanged { lines } => {
                        self.replace(ticket, &customer, lines, now_ms, on_change)?
                    }
                    _ => on_change(),
                }
                Ok(Outcome::Moved(state.commit_move(ticket, step, actor, note, now_ms)))
            }
            AftersalesCommand::Scan { code, actor, note } => {
                let Some(id) = state.match_scan(code).map(|t| t.id.clone()) else {
                    on_change();
                    let parcel = state.record_parcel(code, actor, note, now_ms);
                    return Ok(Outcome::Scanned(Scanned::Unmatched { parcel }));
                };
                let step = Step::Received { via: code.clone() };
                state.check_move(&id, &step)?;
                on_change();
                let ticket = Box::new(state.commit_move(&id, &step, actor, note, now_ms));
                Ok(Outcome::Scanned(Scanned::Ticket { ticket }))
            }
        }
    }

    /// Puts the restockable units of an inspection back on hand (at the named location for
    /// SKUs kept per location): every line is checked before the first change.
    fn restock(&self, lines: &[Inspection], on_change: impl FnOnce()) -> Result<(), TicketError> {
        let restocked: Vec<&Inspection> = lines.iter().filter(|l| l.restockable > 0).collect();
        let shards: SmallVec<[usize; 8]> =
            restocked.iter().map(|l| self.shard_of(l.sku.as_bytes())).collect();
        let mut locked = self.lock(shards);
        for line in &restocked {
            let shard = locked.shard(self.shard_of(line.sku.as_bytes()));
            let sku = shard
                .skus
                .get(line.sku.as_bytes())
                .ok_or_else(|| stock_refused(&line.sku, ResultCode::UnknownSku))?;
            let location = line.location.as_bytes();
            match sku.locations.as_deref() {
                None if !location.is_empty() => {
                    return Err(stock_refused(&line.sku, ResultCode::UnknownLocation))
                }
                Some(_) if location.is_empty() => {
                    return Err(stock_refused(&line.sku, ResultCode::LocationRequired))
                }
                Some(locations) if !locations.list.iter().any(|l| &l.id[..] == location) => {
                    return Err(stock_refused(&line.sku, ResultCode::UnknownLocation))
                }
                _ => {}
            }
            // A SKU's on-hand count is the sum over its locations: it bounds each of them.
            if sku.on_hand.checked_add(u64::from(line.restockable)).is_none() {
                return Err(stock_refused(&line.sku, ResultCode::InvalidArgument));
            }
        }
        for line in &restocked {
            let shard = locked.shard(self.shard_of(line.sku.as_bytes()));
            let sku: &mut Sku = shard.skus.get_mut(line.sku.as_bytes()).expect("checked above");
            let units = u64::from(line.restockable);
            match sku.locations.as_deref_mut() {
                None => sku.counters.on_hand += units,
                Some(locations) => {
                    let at =
                        locations.list.iter_mut().find(|l| &l.id[..] == line.location.as_bytes());
                    at.expect("checked above").stock.on_hand += units;
                    sku.sum_locations();
                }
            }
        }
        on_change();
        Ok(())
    }

    /// Makes the exchange's replacement: a reservation of `lines`, confirmed at once, tagged
    /// with the `aftersales` channel and the ticket's customer.
    fn replace(
        &self,
        ticket: &str,
        customer: &str,
        lines: &[Line],
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Result<(), TicketError> {
        let request = Reserve {
            id: Bytes::from(aftersales::replacement_id(ticket)),
            ttl_ms: 0,
            channel: Bytes::from_static(REPLACEMENT_CHANNEL.as_bytes()),
            customer: Bytes::copy_from_slice(customer.as_bytes()),
            lines: lines
                .iter()
                .map(|l| WireLine { sku: Bytes::copy_from_slice(l.sku.as_bytes()), qty: l.qty })
                .collect(),
        };
        let mut created = false;
        let (reply, _) =
            self.reserve_then(&request, Placement::default(), false, true, now_ms, || {
                created = true;
                on_change();
            });
        match reply.code {
            ResultCode::Ok if created => Ok(()),
            // The id was taken by someone else's reservation.
            ResultCode::Ok | ResultCode::IdConflict => {
                Err(TicketError::IdConflict(aftersales::replacement_id(ticket)))
            }
            code => {
                let sku = reply
                    .failed_line
                    .and_then(|index| lines.get(usize::from(index)))
                    .map_or("", |l| l.sku.as_str());
                Err(stock_refused(sku, code))
            }
        }
    }

    /// Reads the tickets.
    pub fn with_aftersales<R>(&self, read: impl FnOnce(&Aftersales) -> R) -> R {
        read(&self.aftersales.lock())
    }

    pub(super) fn aftersales_image(&self) -> AftersalesImage {
        self.aftersales.lock().image()
    }

    pub(super) fn load_aftersales(&self, image: &AftersalesImage) -> Result<(), String> {
        *self.aftersales.lock() = Aftersales::from_image(image)?;
        Ok(())
    }
}
