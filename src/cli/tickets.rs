//! `stockd tickets ...`: the after-sales API from a terminal (open, move, scan, list, show,
//! report), over the server's HTTP side. A refusal prints its code and message (exit 3).

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use stockd_protocol::ResultCode;

#[derive(Args, Debug)]
pub struct TicketArgs {
    #[command(flatten)]
    http: super::http::HttpTarget,
    #[command(subcommand)]
    command: TicketCommand,
}

#[derive(Subcommand, Debug)]
enum TicketCommand {
    /// Open a ticket for a confirmed order: `stockd tickets open --kind return --order O-1
    /// --reason "too small" --actor anna SKU-A:1`.
    Open {
        /// return, exchange or refund_only.
        #[arg(long)]
        kind: String,
        /// The order's reservation id.
        #[arg(long)]
        order: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: String,
        #[arg(long, default_value = "")]
        customer: String,
        #[arg(long, default_value = "")]
        tracking: String,
        /// Ticket id (makes the request idempotent); generated when absent.
        #[arg(long, default_value = "")]
        id: String,
        /// Returned lines as SKU:QTY.
        #[arg(required = true, value_parser = sku_qty)]
        lines: Vec<(String, u32)>,
    },
    /// Move a ticket to its next state: `stockd tickets move RMA-00000001 approved --actor bo`.
    Move {
        id: String,
        /// approved, rejected, awaiting_return, received, inspected, refunded, exchanged, closed.
        to: String,
        #[arg(long)]
        actor: String,
        #[arg(long, default_value = "")]
        note: String,
        /// awaiting_return: the parcel's tracking number.
        #[arg(long)]
        tracking: Option<String>,
        /// inspected: SKU:RESTOCKABLE:DAMAGED, or SKU:RESTOCKABLE:DAMAGED@LOCATION.
        #[arg(long = "inspect", value_parser = inspection)]
        inspections: Vec<Value>,
        /// exchanged: replacement lines as SKU:QTY.
        #[arg(long = "replace", value_parser = sku_qty)]
        replacements: Vec<(String, u32)>,
    },
    /// A parcel arrived: match it by tracking number or order id (or record it unmatched).
    Scan {
        code: String,
        #[arg(long)]
        actor: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List tickets, one per line.
    List {
        #[arg(long)]
        state: Option<String>,
        /// Only overdue tickets.
        #[arg(long)]
        overdue: bool,
        /// Only tickets not closed.
        #[arg(long)]
        open: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one ticket (JSON).
    Show { id: String },
    /// The SLA report (JSON) over [from, to) in UTC milliseconds (default: the last 30 days).
    Report {
        #[arg(long)]
        from_ms: Option<u64>,
        #[arg(long)]
        to_ms: Option<u64>,
    },
}

fn sku_qty(text: &str) -> Result<(String, u32), String> {
    let (sku, qty) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not SKU:QTY"))?;
    let qty = qty.parse::<u32>().map_err(|e| format!("bad quantity in {text:?}: {e}"))?;
    Ok((sku.to_string(), qty))
}

fn inspection(text: &str) -> Result<Value, String> {
    let (spec, location) = text.split_once('@').unwrap_or((text, ""));
    let mut parts = spec.rsplitn(3, ':');
    let (Some(damaged), Some(restockable), Some(sku)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{text:?} is not SKU:RESTOCKABLE:DAMAGED[@LOCATION]"));
    };
    let number = |n: &str| n.parse::<u32>().map_err(|e| format!("bad count in {text:?}: {e}"));
    Ok(json!({
        "sku": sku,
        "restockable": number(restockable)?,
        "damaged": number(damaged)?,
        "location": location,
    }))
}

fn lines(lines: &[(String, u32)]) -> Value {
    lines.iter().map(|(sku, qty)| json!({ "sku": sku, "qty": qty })).collect()
}

fn summary(ticket: &Value) -> String {
    let overdue = match ticket["overdue"]["stage"].as_str() {
        Some(stage) => format!(" overdue={stage}"),
        None => String::new(),
    };
    format!(
        "{} {} {} order={} tracking={}{overdue}",
        ticket["id"].as_str().unwrap_or("?"),
        ticket["kind"].as_str().unwrap_or("?"),
        ticket["state"].as_str().unwrap_or("?"),
        ticket["order"].as_str().unwrap_or(""),
        ticket["tracking"].as_str().unwrap_or(""),
    )
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON prints")
}

pub async fn run(args: TicketArgs) -> anyhow::Result<ResultCode> {
    use reqwest::Method;
    let http = &args.http;
    let reply = match args.command {
        TicketCommand::Open { kind, order, reason, actor, customer, tracking, id, lines: l } => {
            let body = json!({
                "id": id, "kind": kind, "order": order, "reason": reason, "actor": actor,
                "customer": customer, "tracking": tracking, "lines": lines(&l),
            });
            http.call(Method::POST, "/api/v1/tickets", Some(body)).await?.map(|t| summary(&t))
        }
        TicketCommand::Move { id, to, actor, note, tracking, inspections, replacements } => {
            let mut body = json!({ "to": to, "actor": actor, "note": note });
            match to.as_str() {
                "awaiting_return" => body["tracking"] = json!(tracking.unwrap_or_default()),
                "inspected" => body["lines"] = Value::Array(inspections),
                "exchanged" => body["lines"] = lines(&replacements),
                _ => {}
            }
            let path = format!("/api/v1/tickets/{id}/transitions");
            http.call(Method::POST, &path, Some(body)).await?.map(|t| summary(&t))
        }
        TicketCommand::Scan { code, actor, note } => {
            let body = json!({ "code": code, "actor": actor, "note": note });
            http.call(Method::POST, "/api/v1/aftersales/scan", Some(body)).await?.map(|reply| {
                if reply["matched"] == true {
                    format!("matched {}", summary(&reply["ticket"]))
                } else {
                    format!("unmatched parcel={}", reply["parcel"]["seq"])
                }
            })
        }
        TicketCommand::List { state, overdue, open, limit } => {
            let mut query = vec![format!("limit={limit}")];
            query.extend(state.map(|s| format!("state={s}")));
            query.extend(overdue.then(|| "overdue=true".to_string()));
            query.extend(open.then(|| "open=true".to_string()));
            let path = format!("/api/v1/tickets?{}", query.join("&"));
            http.call(Method::GET, &path, None).await?.map(|reply| {
                let tickets = reply["tickets"].as_array().cloned().unwrap_or_default();
                let mut out: Vec<String> = tickets.iter().map(summary).collect();
                out.push(format!("{} tickets", reply["matched"]));
                out.join("\n")
            })
        }
        TicketCommand::Show { id } => {
            let path = format!("/api/v1/tickets/{id}");
            http.call(Method::GET, &path, None).await?.map(|t| pretty(&t))
        }
        TicketCommand::Report { from_ms, to_ms } => {
            let mut query = Vec::new();
            query.extend(from_ms.map(|ms| format!("from_ms={ms}")));
            query.extend(to_ms.map(|ms| format!("to_ms={ms}")));
            let path = format!("/api/v1/aftersales/report?{}", query.join("&"));
            http.call(Method::GET, &path, None).await?.map(|r| pretty(&r))
        }
    };
    match reply {
        Ok(text) => {
            println!("{text}");
            Ok(ResultCode::Ok)
        }
        Err(code) => Ok(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspections_parse_with_and_without_a_location() {
        let parsed = inspection("TEE-M:2:1@east").unwrap();
        assert_eq!(
            parsed,
            json!({"sku": "TEE-M", "restockable": 2, "damaged": 1, "location": "east"})
        );
        assert_eq!(inspection("A:B:0:1").unwrap()["sku"], "A:B", "SKUs may hold colons");
        for bad in ["A:1", "A:x:1", "A:1:-1"] {
            assert!(inspection(bad).is_err(), "{bad} accepted");
        }
    }
}
