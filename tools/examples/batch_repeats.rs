//! How often a batch writes the same row twice: the bench's 100k-event
//! stream (seed 1) projected natively, split by domain into 12 partitions
//! by a hash of the entity key (the bench's topics have 12), cut into
//! 500-event batches, and per table and operation kind the share of
//! operations whose table, column list and key an earlier operation of the
//! same batch already wrote. That share is what coalescing them within a
//! batch could save.
//!
//! ```text
//! cargo run --release -p projector-tools --example batch_repeats
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};

use flatten::RowOp;

fn main() -> anyhow::Result<()> {
    let mut generator = projector_tools::generate::Generator::new(1);
    let domains: HashMap<&str, flatten::Domain> =
        flatten::DOMAINS.into_iter().map(|d| (d.name, d)).collect();
    // (domain, partition) -> each event's ops as (kind, table, columns and key).
    type Written = (&'static str, String, String);
    let mut partitions: HashMap<(&str, u64), Vec<Vec<Written>>> = HashMap::new();
    for _ in 0..100_000 {
        let e = generator.next_event();
        let envelope = events::Envelope::from_slice(&e.payload)?;
        let ops = projector_host::sandbox::envelope_view(&envelope, |flat| {
            (domains[e.domain].project)(flat).map_err(|e| format!("{e:?}"))
        })
        .map_err(anyhow::Error::msg)?;
        let names = |cols: &[flatten::Column]| -> String {
            cols.iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let written = ops
            .iter()
            .map(|op| match op {
                RowOp::Upsert(u) => (
                    "upsert",
                    u.table.clone(),
                    format!("{}|{:?}", names(&u.values), u.key),
                ),
                RowOp::Update(u) => (
                    "update",
                    u.table.clone(),
                    format!("{}|{:?}", names(&u.values), u.key),
                ),
                RowOp::Replace(r) => ("replace", r.table.clone(), format!("{:?}", r.parent)),
                RowOp::SoftDelete(k) => ("soft delete", k.table.clone(), format!("{:?}", k.key)),
                RowOp::Delete(k) => ("delete", k.table.clone(), format!("{:?}", k.key)),
            })
            .collect();
        let partition = e
            .entity_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
            % 12;
        partitions
            .entry((e.domain, partition))
            .or_default()
            .push(written);
    }
    let mut counts: BTreeMap<(String, &str), (usize, usize)> = BTreeMap::new();
    for events in partitions.values() {
        for batch in events.chunks(500) {
            let mut seen = HashSet::new();
            for (kind, table, shape) in batch.iter().flatten() {
                let count = counts.entry((table.clone(), *kind)).or_default();
                count.0 += 1;
                if !seen.insert((*kind, table, shape)) {
                    count.1 += 1;
                }
            }
        }
    }
    for ((table, kind), (ops, repeats)) in counts {
        println!(
            "{table:<18} {kind:<12} {ops:>6} ops, {repeats:>5} rewrite a row written earlier in the batch ({:.1}%)",
            100.0 * repeats as f64 / ops as f64
        );
    }
    Ok(())
}
