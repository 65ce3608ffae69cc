//! The row SQL of a batch: guarded multi-row statements grouped by kind.
//!
//! - **No stale overwrite**: every write is guarded by the row's
//!   `event_timestamp`: an upsert or update changes a row only if the event is
//!   at least as new as the row; soft deletes and deletes likewise; a child
//!   `replace` applies only if its event is at least as new as the parent row.
//!   Replays and redrives of old events are therefore harmless.
//! - **Order**: within a batch, statements are grouped by kind (upserts,
//!   replaces, updates, soft deletes, deletes; parents before children) and
//!   rows keep batch order. Because every write is timestamp-guarded, the
//!   final state equals that of applying the events one by one.
//! - **Few statements**: upserts are multi-row `INSERT … ON DUPLICATE KEY
//!   UPDATE`s; updates and soft deletes are multi-row `UPDATE … JOIN`s, in
//!   rounds so that each row's writes still run in batch order. Every
//!   operation runs (none is folded into a later one), so a write the
//!   database refuses is refused here too, and its event is isolated.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDateTime;
use sqlx::{MySqlConnection, Row as _};

use super::Applied;
use super::classify::ExecError;
use super::schema::{ForeignKey, Schema, TableInfo};
use super::statement::{Statement, padded_chunks, shaped_chunks};
use super::tombstones::{record, row_key, tombstones_of, values_key};
use super::validate::{Bind, ValidOp};

/// MySQL caps a statement at 65 535 placeholders; stay well below.
const MAX_PLACEHOLDERS: usize = 30_000;

/// Rows per `IN` list of keys.
const KEYS_PER_STATEMENT: usize = 500;

/// Tables ordered parents first.
fn table_order(schema: &Schema) -> HashMap<&str, usize> {
    let depth = |name: &str| {
        let mut d = 0;
        let mut cur = schema.tables.get(name);
        while let Some(t) = cur.and_then(|t| t.parent.as_ref()) {
            d += 1;
            if d > 16 {
                break;
            }
            cur = schema.tables.get(&t.parent_table);
        }
        d
    };
    schema
        .tables
        .keys()
        .map(|t| (t.as_str(), depth(t)))
        .collect()
}

/// Bound columns of one row: (name, value).
type Cols = [(String, Bind)];
/// One upsert of a batch: key, values, stamp.
type UpsertRow<'a> = (&'a Cols, &'a Cols, Stamp<'a>);

struct Stamp<'a> {
    event_id: &'a str,
    ts: NaiveDateTime,
}

/// Writes the row operations of `events` with the guarded multi-row
/// statements, and nothing else (no `processed_events`, no offsets): the
/// part of [`apply_batch`] that the benchmark's MySQL ceiling measures alone.
pub async fn write_ops(
    conn: &mut MySqlConnection,
    schema: &Schema,
    events: &[&Applied],
) -> Result<(), ExecError> {
    let order = table_order(schema);
    let table = |name: &str| -> &TableInfo { &schema.tables[name] };

    // Phase 1: upserts, grouped by table and column list, parents first;
    // an upsert older than its row's tombstone is dropped.
    let tombs = tombstones_of(conn, schema, events).await?;
    let mut upserts: BTreeMap<(usize, String, Vec<String>), Vec<UpsertRow>> = BTreeMap::new();
    for e in events {
        for op in &e.ops {
            if let ValidOp::Upsert {
                table: t,
                key,
                values,
            } = op
            {
                if tombs
                    .get(&(t.as_str(), row_key(key)))
                    .is_some_and(|deleted| *deleted > e.timestamp)
                {
                    continue;
                }
                let names = key.iter().chain(values).map(|(n, _)| n.clone()).collect();
                upserts
                    .entry((order[t.as_str()], t.clone(), names))
                    .or_default()
                    .push((
                        key,
                        values,
                        Stamp {
                            event_id: &e.event_id,
                            ts: e.timestamp,
                        },
                    ));
            }
        }
    }
    for ((_, t, names), rows) in &upserts {
        let info = table(t);
        check_unique_conflicts(conn, info, names, rows.iter().map(|(k, v, _)| (*k, *v))).await?;
        upsert_rows(conn, info, names, rows).await?;
    }

    // Phase 2: replaces, right after the upserts of their parents (a later
    // partial update of the parent must not make an earlier full document's
    // children look stale). Per parent, the last replace of the batch whose event
    // is at least as new as the parent row wins; the others are stale.
    let mut replaces: BTreeMap<(usize, String), Vec<ReplaceOp>> = BTreeMap::new();
    for e in events {
        for op in &e.ops {
            if let ValidOp::Replace {
                table: t,
                parent,
                rows,
            } = op
            {
                replaces
                    .entry((order[t.as_str()], t.clone()))
                    .or_default()
                    .push((
                        parent,
                        rows,
                        Stamp {
                            event_id: &e.event_id,
                            ts: e.timestamp,
                        },
                    ));
            }
        }
    }
    for ((_, t), ops) in &replaces {
        replace_children(conn, schema, table(t), ops).await?;
    }

    // Phases 3 and 4: updates, then soft deletes, each a guarded UPDATE of
    // a row (a soft delete sets `deleted_at` to its event's time).
    let mut updates = Vec::new();
    let mut soft_deletes = Vec::new();
    for e in events {
        let stamp = || Stamp {
            event_id: &e.event_id,
            ts: e.timestamp,
        };
        for op in &e.ops {
            match op {
                ValidOp::Update {
                    table: t,
                    key,
                    values,
                } => updates.push(RowUpdate {
                    table: table(t),
                    key,
                    values: values
                        .iter()
                        .map(|(n, v)| (n.as_str(), Cow::Borrowed(v)))
                        .collect(),
                    stamp: stamp(),
                }),
                ValidOp::SoftDelete { table: t, key } => soft_deletes.push(RowUpdate {
                    table: table(t),
                    key,
                    values: vec![("deleted_at", Cow::Owned(Bind::Timestamp(e.timestamp)))],
                    stamp: stamp(),
                }),
                ValidOp::Delete { .. } | ValidOp::Upsert { .. } | ValidOp::Replace { .. } => {}
            }
        }
    }
    update_rows(conn, &updates).await?;
    update_rows(conn, &soft_deletes).await?;

    // Phase 5: deletes, guarded, in batch order.
    for e in events {
        for op in &e.ops {
            if let ValidOp::Delete { table: t, key } = op {
                let sql = format!(
                    "DELETE FROM {} WHERE {} AND `event_timestamp` <= ?",
                    table(t).name,
                    where_key(key)
                );
                let mut q = sqlx::query(&sql);
                for (_, v) in key {
                    q = q.bind(v);
                }
                q.bind(e.timestamp).execute(&mut *conn).await?;
                record(conn, table(t).name.as_str(), key, e).await?;
            }
        }
    }
    Ok(())
}

/// Column names reach SQL only after [`validate`] checked them against the
/// schema and the identifier pattern.
fn quote(name: &str) -> String {
    format!("`{name}`")
}

/// `` `a`, `b` `` for a list of validated column names.
fn quote_list(cols: &[String]) -> String {
    cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
}

fn where_key(key: &[(String, Bind)]) -> String {
    key.iter()
        .map(|(n, _)| format!("{} = ?", quote(n)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

async fn upsert_rows(
    conn: &mut MySqlConnection,
    info: &TableInfo,
    names: &[String],
    rows: &[UpsertRow<'_>],
) -> Result<(), ExecError> {
    let cols: Vec<String> = names.iter().map(|n| quote(n)).collect();
    let newer = "VALUES(`event_timestamp`) >= `event_timestamp`";
    // A conflict on another unique key than the primary key must not touch
    // someone else's row: the primary key has to match as well.
    let same_pk: Vec<String> = info
        .primary_key
        .iter()
        .map(|k| format!("{0} = VALUES({0})", quote(k)))
        .collect();
    let guard = format!("{newer} AND {}", same_pk.join(" AND "));
    let mut sets: Vec<String> = names
        .iter()
        .filter(|n| !info.primary_key.contains(n))
        .map(|n| format!("{0} = IF({guard}, VALUES({0}), {0})", quote(n)))
        .collect();
    sets.push(format!(
        "`event_id` = IF({guard}, VALUES(`event_id`), `event_id`)"
    ));
    // Last, so every condition above saw the row's old timestamp.
    sets.push(format!(
        "`event_timestamp` = IF({guard}, VALUES(`event_timestamp`), `event_timestamp`)"
    ));
    let head = format!(
        "INSERT INTO {} ({}, `event_id`, `event_timestamp`) VALUES ",
        info.name,
        cols.join(", ")
    );
    let tail = format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "));
    let per_row = names.len() + 2;
    for chunk in shaped_chunks(rows, (MAX_PLACEHOLDERS / per_row).max(1)) {
        let mut q = Statement::new(
            &head,
            Statement::tuples_len(chunk.len(), per_row) + tail.len(),
        );
        q.tuples(chunk, |row, (key, values, stamp)| {
            for (_, v) in key.iter().chain(values.iter()) {
                row.bind(v);
            }
            row.bind(stamp.event_id).bind(stamp.ts);
        });
        q.push(&tail);
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The statement an update runs in: its table, key columns and columns.
type UpdateShape<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>);

/// A guarded `UPDATE` of one row: an update's values, or a soft delete's
/// `deleted_at`.
struct RowUpdate<'a> {
    table: &'a TableInfo,
    key: &'a Cols,
    values: Vec<(&'a str, Cow<'a, Bind>)>,
    stamp: Stamp<'a>,
}

impl RowUpdate<'_> {
    fn columns(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| *n)
    }
}

/// Runs guarded row updates (all of one phase, in batch order) with few
/// statements, leaving what running them one by one leaves:
///
/// - Round `n` holds each row's `n`-th update, and rounds run in order, so
///   a row's updates keep batch order (a stale partial update is never
///   moved past a newer one); a round touches each row at most once.
/// - Within a round, updates run as one multi-row `UPDATE … JOIN` per
///   table, key and column list: a derived table of (key, values, stamp)
///   rows joined on the key, `WHERE` the row is not newer. The rows are
///   distinct, so the order between them does not matter.
/// - No update is dropped, even one a later update overwrites: the
///   database sees every write, and refuses one (a trigger, a constraint)
///   exactly as it would one by one, so its event is isolated and
///   dead-lettered.
async fn update_rows(conn: &mut MySqlConnection, ops: &[RowUpdate<'_>]) -> Result<(), ExecError> {
    if ops.is_empty() {
        return Ok(());
    }
    // Each update's round: how many updates of its row came before it.
    let mut seen: HashMap<(&str, String), usize> = HashMap::new();
    let mut rounds: Vec<BTreeMap<UpdateShape, Vec<usize>>> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let n = seen
            .entry((op.table.name.as_str(), row_key(op.key)))
            .or_default();
        if rounds.len() <= *n {
            rounds.push(BTreeMap::new());
        }
        let keys = op.key.iter().map(|(n, _)| n.as_str()).collect();
        rounds[*n]
            .entry((op.table.name.as_str(), keys, op.columns().collect()))
            .or_default()
            .push(i);
        *n += 1;
    }
    for round in &rounds {
        for ((_, keys, columns), members) in round {
            let info = ops[members[0]].table;
            let per_row = keys.len() + columns.len() + 2;
            // Each row is a query block of its own: kept to a few hundred.
            let rows = KEYS_PER_STATEMENT.min(MAX_PLACEHOLDERS / per_row).max(1);
            for chunk in shaped_chunks(members, rows) {
                joined_update(conn, info, keys, columns, chunk.iter().map(|&i| &ops[i])).await?;
            }
        }
    }
    Ok(())
}

/// One multi-row guarded update:
///
/// ```sql
/// UPDATE `t` AS t JOIN (SELECT ? AS k0, ? AS v0, ? AS eid, CAST(? AS DATETIME(6)) AS ts
///                       UNION ALL SELECT ?, ?, ?, CAST(? AS DATETIME(6))) AS u
///   ON t.`id` = u.k0
///   SET t.`status` = u.v0, t.`event_id` = u.eid, t.`event_timestamp` = u.ts
///   WHERE t.`event_timestamp` <= u.ts
/// ```
///
/// A text key is compared in the column's own character set and
/// collation (a derived column carries the connection's, and MySQL refuses
/// to compare two implicit collations; the column side stays bare, so its
/// index serves the join); temporal values are cast to `DATETIME(6)` so that
/// no fraction of a second is lost in the derived table.
async fn joined_update<'a>(
    conn: &mut MySqlConnection,
    info: &TableInfo,
    keys: &[&str],
    columns: &[&str],
    rows: impl Iterator<Item = &'a RowUpdate<'a>>,
) -> Result<(), ExecError> {
    let temporal = |c: &str| {
        info.types
            .get(c)
            .is_some_and(|t| matches!(t.kind, super::schema::Kind::Time { .. }))
    };
    let mut first = String::from("SELECT ");
    let mut next = String::from(" UNION ALL SELECT ");
    let mut push = |alias: String, temporal: bool| {
        let sep = if first.len() > "SELECT ".len() {
            ","
        } else {
            ""
        };
        let value = if temporal {
            "CAST(? AS DATETIME(6))"
        } else {
            "?"
        };
        first.push_str(&format!("{sep}{value} AS {alias}"));
        next.push_str(&format!("{sep}{value}"));
    };
    for (i, k) in keys.iter().enumerate() {
        push(format!("k{i}"), temporal(k));
    }
    for (i, c) in columns.iter().enumerate() {
        push(format!("v{i}"), temporal(c));
    }
    push("eid".into(), false);
    push("ts".into(), true);
    let on: Vec<String> = keys
        .iter()
        .enumerate()
        .map(
            |(i, k)| match info.types.get(*k).and_then(|t| t.collation.as_deref()) {
                Some(c) => {
                    let charset = c.split('_').next().unwrap_or(c);
                    format!(
                        "t.{} = CONVERT(u.k{i} USING {charset}) COLLATE {c}",
                        quote(k)
                    )
                }
                None => format!("t.{} = u.k{i}", quote(k)),
            },
        )
        .collect();
    let mut set: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("t.{} = u.v{i}", quote(c)))
        .collect();
    set.push("t.`event_id` = u.eid".into());
    set.push("t.`event_timestamp` = u.ts".into());
    let tail = format!(
        ") AS u ON {} SET {} WHERE t.`event_timestamp` <= u.ts",
        on.join(" AND "),
        set.join(", ")
    );
    let mut q = Statement::new(&format!("UPDATE {} AS t JOIN (", info.name), 0);
    for (i, row) in rows.enumerate() {
        q.push(if i == 0 {
            first.as_str()
        } else {
            next.as_str()
        });
        for (_, v) in row.key {
            q.arg(v);
        }
        for (_, v) in &row.values {
            q.arg(v.as_ref());
        }
        q.arg(row.stamp.event_id).arg(row.stamp.ts);
    }
    q.push(&tail);
    q.execute(&mut *conn).await?;
    Ok(())
}

/// Refuses an upsert whose secondary unique key (e.g. `orders.order_number`)
/// already belongs to another row, in the table or earlier in the batch.
async fn check_unique_conflicts<'a>(
    conn: &mut MySqlConnection,
    info: &TableInfo,
    names: &[String],
    rows: impl Iterator<Item = (&'a [(String, Bind)], &'a [(String, Bind)])>,
) -> Result<(), ExecError> {
    let uniques: Vec<&Vec<String>> = info
        .unique_keys
        .iter()
        .filter(|u| u.iter().all(|c| names.contains(c)))
        .collect();
    if uniques.is_empty() {
        return Ok(());
    }
    let rows: Vec<HashMap<&str, &Bind>> = rows
        .map(|(k, v)| {
            k.iter()
                .chain(v.iter())
                .map(|(n, b)| (n.as_str(), b))
                .collect()
        })
        .collect();
    for unique in uniques {
        // Keyed by the debug form: `Bind` holds floats and so is not `Hash`.
        let mut owners: HashMap<String, Vec<&Bind>> = HashMap::new();
        let mut probe = Vec::new();
        for row in &rows {
            let uk: Vec<&Bind> = unique.iter().map(|c| row[c.as_str()]).collect();
            if uk.iter().any(|b| **b == Bind::Null) {
                continue;
            }
            let pk: Vec<&Bind> = info.primary_key.iter().map(|c| row[c.as_str()]).collect();
            if let Some(owner) = owners.get(&format!("{uk:?}")) {
                if *owner != pk {
                    return Err(ExecError::Data(format!(
                        "{}: two rows of the batch share the unique key {unique:?}",
                        info.name.as_str()
                    )));
                }
            } else {
                owners.insert(format!("{uk:?}"), pk.clone());
                probe.push((uk, pk));
            }
        }
        for chunk in padded_chunks(&probe, KEYS_PER_STATEMENT) {
            let head = format!(
                "SELECT {}, {} FROM {} WHERE ({}) IN (",
                quote_list(&info.primary_key),
                quote_list(unique),
                info.name,
                quote_list(unique),
            );
            let mut q = Statement::new(&head, Statement::tuples_len(chunk.len(), unique.len()) + 1);
            q.tuples(&chunk, |tuple, (uk, _)| {
                for b in uk {
                    tuple.bind(*b);
                }
            });
            q.push(")");
            for row in q.fetch_all(&mut *conn).await? {
                let stored_pk: Vec<String> = (0..info.primary_key.len())
                    .map(|i| row.try_get::<String, _>(i))
                    .collect::<Result<_, _>>()?;
                let stored_uk: Vec<String> = (0..unique.len())
                    .map(|i| row.try_get::<String, _>(info.primary_key.len() + i))
                    .collect::<Result<_, _>>()?;
                for (uk, pk) in chunk.iter().copied() {
                    let as_text = |v: &[&Bind]| -> Vec<String> {
                        v.iter()
                            .map(|b| {
                                if let Bind::Text(s) = b {
                                    s.clone()
                                } else {
                                    format!("{b:?}")
                                }
                            })
                            .collect()
                    };
                    if as_text(uk) == stored_uk && as_text(pk) != stored_pk {
                        return Err(ExecError::Data(format!(
                            "{}: unique key {unique:?} = {stored_uk:?} already belongs to {stored_pk:?}",
                            info.name.as_str()
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

type ReplaceOp<'a> = (&'a [(String, Bind)], &'a [Vec<(String, Bind)>], Stamp<'a>);

async fn replace_children(
    conn: &mut MySqlConnection,
    schema: &Schema,
    info: &TableInfo,
    ops: &[ReplaceOp<'_>],
) -> Result<(), ExecError> {
    let Some(ForeignKey {
        columns: fk_cols,
        parent_table,
        parent_columns: parent_cols,
    }) = &info.parent
    else {
        return Err(ExecError::Data(format!(
            "{} has no parent",
            info.name.as_str()
        )));
    };
    let parent_info = &schema.tables[parent_table];
    // The parent's key, in FK column order, for each op.
    let parent_key = |parent: &[(String, Bind)]| -> Vec<Bind> {
        fk_cols
            .iter()
            .map(|c| {
                parent
                    .iter()
                    .find(|(n, _)| n == c)
                    .map(|(_, b)| b.clone())
                    .unwrap_or(Bind::Null)
            })
            .collect()
    };
    // Keys by their text (hash lookups: a batch can hold thousands).
    let mut keys: Vec<Vec<Bind>> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (parent, _, _) in ops {
        let k = parent_key(parent);
        if seen.insert(values_key(k.iter())) {
            keys.push(k);
        }
    }
    // Current parent timestamps (locked: no concurrent writer can slip in).
    let mut parent_ts: HashMap<String, NaiveDateTime> = HashMap::new();
    for chunk in padded_chunks(&keys, KEYS_PER_STATEMENT) {
        let head = format!(
            "SELECT {}, `event_timestamp` FROM {} WHERE ({}) IN (",
            quote_list(parent_cols),
            parent_info.name,
            quote_list(parent_cols),
        );
        let mut q = Statement::new(
            &head,
            Statement::tuples_len(chunk.len(), parent_cols.len()) + 12,
        );
        q.tuples(&chunk, |tuple, k| {
            for b in k.iter() {
                tuple.bind(b);
            }
        });
        q.push(") FOR UPDATE");
        for row in q.fetch_all(&mut *conn).await? {
            let key: Vec<Bind> = (0..parent_cols.len())
                .map(|i| row.try_get::<String, _>(i).map(Bind::Text))
                .collect::<Result<_, _>>()?;
            parent_ts.insert(values_key(key.iter()), row.try_get(parent_cols.len())?);
        }
    }
    // The winning op per parent: the last one at least as new as the parent row.
    let mut winners: Vec<(Vec<Bind>, usize)> = Vec::new();
    let mut winner_of: HashMap<String, usize> = HashMap::new();
    for (i, (parent, _, stamp)) in ops.iter().enumerate() {
        let k = parent_key(parent);
        let text = values_key(k.iter());
        let Some(ts) = parent_ts.get(&text) else {
            continue;
        };
        if stamp.ts >= *ts {
            match winner_of.get(&text) {
                Some(&w) => winners[w].1 = i,
                None => {
                    winner_of.insert(text, winners.len());
                    winners.push((k, i));
                }
            }
        }
    }
    if winners.is_empty() {
        return Ok(());
    }
    for chunk in padded_chunks(&winners, KEYS_PER_STATEMENT) {
        let head = format!(
            "DELETE FROM {} WHERE ({}) IN (",
            info.name,
            quote_list(fk_cols),
        );
        let mut q = Statement::new(&head, Statement::tuples_len(chunk.len(), fk_cols.len()) + 1);
        q.tuples(&chunk, |tuple, (k, _)| {
            for b in k {
                tuple.bind(b);
            }
        });
        q.push(")");
        q.execute(&mut *conn).await?;
    }
    // Insert the winners' rows, grouped by column list.
    let mut groups: BTreeMap<Vec<String>, Vec<(Vec<&Bind>, &Stamp)>> = BTreeMap::new();
    for (k, i) in &winners {
        let (_, rows, stamp) = &ops[*i];
        for row in rows.iter() {
            let mut names: Vec<String> = fk_cols.clone();
            names.extend(row.iter().map(|(n, _)| n.clone()));
            let mut values: Vec<&Bind> = k.iter().collect();
            values.extend(row.iter().map(|(_, b)| b));
            groups.entry(names).or_default().push((values, stamp));
        }
    }
    for (names, rows) in groups {
        let head = format!(
            "INSERT INTO {} ({}, `event_id`, `event_timestamp`) VALUES ",
            info.name,
            quote_list(&names)
        );
        let per_row = names.len() + 2;
        for chunk in shaped_chunks(&rows, (MAX_PLACEHOLDERS / per_row).max(1)) {
            let mut q = Statement::new(&head, Statement::tuples_len(chunk.len(), per_row));
            q.tuples(chunk, |row, (values, stamp)| {
                for v in values {
                    row.bind(*v);
                }
                row.bind(stamp.event_id).bind(stamp.ts);
            });
            q.execute(&mut *conn).await?;
        }
    }
    Ok(())
}
