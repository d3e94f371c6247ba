//! The WMS feed: physical counts and incoming stock from a warehouse system, as CSV.
//!
//! # Format
//!
//! UTF-8 CSV with a header row naming the columns (any order; unknown columns are refused):
//!
//! | column      | required | meaning                                                        |
//! |-------------|----------|----------------------------------------------------------------|
//! | `kind`      | yes      | `count` (a physical count) or `incoming` (a delivery)          |
//! | `sku`       | yes      | the SKU                                                        |
//! | `location`  | no       | the location; blank: the SKU as a whole (counts only)          |
//! | `qty`       | yes      | units on hand (count) or expected (incoming; 0 removes it)      |
//! | `reference` | incoming | the delivery's reference (purchase order, ASN)                 |
//! | `eta`       | no       | expected arrival, RFC 3339 in UTC (`2026-12-01T08:00:00Z`)     |
//! | `priority`  | no       | a counted location's priority; blank keeps the current one     |
//!
//! A count sets the on-hand figure (of the SKU, or of the location); an incoming row sets a
//! delivery. The whole file is checked before anything is applied: one bad row refuses the
//! file, naming its line. Rows are then applied as one bulk change (`POST /api/v1/bulk`), each
//! row accepted or refused on its own.

use serde::Deserialize;

/// One row of a feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedRow {
    Count { sku: String, location: Option<String>, on_hand: u64, priority: Option<u32> },
    Incoming { sku: String, location: String, reference: String, qty: u64, eta_ms: u64 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    kind: String,
    sku: String,
    #[serde(default)]
    location: String,
    qty: u64,
    #[serde(default)]
    reference: String,
    #[serde(default)]
    eta: String,
    #[serde(default)]
    priority: Option<u32>,
}

/// Parses a whole feed; the first bad row is an error naming its line.
pub fn parse(text: &str) -> Result<Vec<FeedRow>, String> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for record in reader.deserialize::<Record>() {
        let record = record.map_err(|e| match e.position() {
            Some(at) => format!("line {}: {e}", at.line()),
            None => e.to_string(),
        })?;
        let line = rows.len() + 2;
        let bad = |why: String| Err(format!("line {line}: {why}"));
        if record.sku.is_empty() {
            return bad("sku is empty".into());
        }
        let location = Some(record.location).filter(|l| !l.is_empty());
        rows.push(match record.kind.as_str() {
            "count" => {
                if !record.reference.is_empty() || !record.eta.is_empty() {
                    return bad("a count has no reference or eta".into());
                }
                if record.priority.is_some() && location.is_none() {
                    return bad("a priority needs a location".into());
                }
                FeedRow::Count {
                    sku: record.sku,
                    location,
                    on_hand: record.qty,
                    priority: record.priority,
                }
            }
            "incoming" => {
                if record.reference.is_empty() {
                    return bad("an incoming row needs a reference".into());
                }
                let eta_ms = if record.eta.is_empty() {
                    0
                } else {
                    match humantime::parse_rfc3339(&record.eta) {
                        Ok(at) => at
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                        Err(e) => return bad(format!("eta {:?}: {e}", record.eta)),
                    }
                };
                FeedRow::Incoming {
                    sku: record.sku,
                    location: location.unwrap_or_default(),
                    reference: record.reference,
                    qty: record.qty,
                    eta_ms,
                }
            }
            other => return bad(format!("kind {other:?} is not count or incoming")),
        });
    }
    if rows.is_empty() {
        return Err("the feed has no rows".into());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_deliveries_parse() {
        let text = "kind,sku,location,qty,reference,eta,priority\n\
                    count,A,,40,,,\n\
                    count,B,WH1,12,,,2\n\
                    count,B,WH2,3,,,\n\
                    incoming, B ,WH1,500,PO-7,2026-12-01T08:00:00Z,\n";
        let rows = parse(text).unwrap();
        assert_eq!(
            rows[0],
            FeedRow::Count { sku: "A".into(), location: None, on_hand: 40, priority: None }
        );
        assert_eq!(
            rows[1],
            FeedRow::Count {
                sku: "B".into(),
                location: Some("WH1".into()),
                on_hand: 12,
                priority: Some(2)
            }
        );
        assert_eq!(
            rows[3],
            FeedRow::Incoming {
                sku: "B".into(),
                location: "WH1".into(),
                reference: "PO-7".into(),
                qty: 500,
                eta_ms: 1_796_112_000_000,
            }
        );
    }

    #[test]
    fn bad_rows_name_their_line() {
        let cases = [
            ("kind,sku,qty\ncount,A,1\nbogus,B,2\n", "line 3"),
            ("kind,sku,qty\ncount,A,-1\n", "line 2"),
            ("kind,sku,qty,reference\nincoming,A,5,\n", "needs a reference"),
            ("kind,sku,qty,reference,eta\nincoming,A,5,PO,tomorrow\n", "eta"),
            ("kind,sku,qty,colour\ncount,A,1,red\n", "colour"),
            ("kind,sku,qty\n", "no rows"),
            ("kind,sku,qty,priority\ncount,A,1,3\n", "needs a location"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
