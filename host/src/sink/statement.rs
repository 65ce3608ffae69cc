//! Statements built as text and arguments together, for the hot path.
//! sqlx's `QueryBuilder` writes every placeholder and separator through
//! `fmt::Write` (and `Separated` formats its separator again for each
//! value); on multi-row statements of thousands of values that shows in the
//! host's profile. Here the text is written with plain pushes, sized once,
//! and each value is encoded as it is bound.

use sqlx::error::BoxDynError;
use sqlx::mysql::{MySqlArguments, MySqlQueryResult, MySqlRow};
use sqlx::{Arguments as _, Encode, MySql, MySqlConnection, Type};

/// A statement's text and its bound values.
pub(super) struct Statement {
    sql: String,
    args: MySqlArguments,
    /// The first value that could not be encoded: reported when the
    /// statement runs, as `sqlx::Error::Encode`.
    failed: Option<BoxDynError>,
}

impl Statement {
    /// A statement starting with `head`, with room for `extra` more bytes.
    pub(super) fn new(head: &str, extra: usize) -> Statement {
        let mut sql = String::with_capacity(head.len() + extra);
        sql.push_str(head);
        Statement {
            sql,
            args: MySqlArguments::default(),
            failed: None,
        }
    }

    /// Room for `rows` tuples of `per_row` values (`(?,?),`).
    pub(super) fn tuples_len(rows: usize, per_row: usize) -> usize {
        rows * (2 * per_row + 2)
    }

    pub(super) fn push(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }

    /// A `?` bound to `value`.
    pub(super) fn bind<'q, T: Encode<'q, MySql> + Type<MySql> + 'q>(
        &mut self,
        value: T,
    ) -> &mut Self {
        self.sql.push('?');
        self.arg(value)
    }

    /// Binds `value` to a `?` already written with [`push`](Self::push).
    pub(super) fn arg<'q, T: Encode<'q, MySql> + Type<MySql> + 'q>(
        &mut self,
        value: T,
    ) -> &mut Self {
        if let Err(e) = self.args.add(value) {
            self.failed.get_or_insert(e);
        }
        self
    }

    /// `(?,?),(?,?)`: one tuple per item, its values bound by `each`.
    pub(super) fn tuples<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut each: impl FnMut(&mut Tuple<'_>, T),
    ) -> &mut Self {
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.sql.push(',');
            }
            self.sql.push('(');
            each(
                &mut Tuple {
                    statement: self,
                    first: true,
                },
                item,
            );
            self.sql.push(')');
        }
        self
    }

    fn ready(self) -> Result<(String, MySqlArguments), sqlx::Error> {
        match self.failed {
            Some(e) => Err(sqlx::Error::Encode(e)),
            None => Ok((self.sql, self.args)),
        }
    }

    pub(super) async fn execute(
        self,
        conn: &mut MySqlConnection,
    ) -> Result<MySqlQueryResult, sqlx::Error> {
        let (sql, args) = self.ready()?;
        sqlx::query_with(&sql, args).execute(conn).await
    }

    pub(super) async fn fetch_all(
        self,
        conn: &mut MySqlConnection,
    ) -> Result<Vec<MySqlRow>, sqlx::Error> {
        let (sql, args) = self.ready()?;
        sqlx::query_with(&sql, args).fetch_all(conn).await
    }
}

/// `items` in chunks of at most `max` whose lengths are powers of two,
/// largest first (`[t; 13]` with a `max` of 8: 8, 4, 1).
///
/// A multi-row statement's text depends on its row count, and the
/// connection prepares every text it has not seen (sqlx caches prepared
/// statements per connection, by text). Row counts that follow the batches
/// make nearly every multi-row statement a new text: a prepare round trip,
/// parsed again by the server, which answers with a definition of every
/// placeholder (tens of thousands of bytes for a 500-row statement). With
/// power-of-two counts a statement has at most `log2(max) + 1` texts per
/// shape, each prepared once per connection; the cost is a few more, smaller
/// statements per batch.
pub(super) fn shaped_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let cap = 1usize << max.max(1).ilog2();
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = cap.min(1 << rest.len().ilog2());
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        Some(chunk)
    })
}

/// `items` in chunks of at most `max`, each padded to a power of two by
/// repeating its last item, for statements where an item given twice
/// changes nothing (a key in an `IN` list): one statement per `max` items,
/// and still at most `log2(max) + 1` texts (see [`shaped_chunks`]).
pub(super) fn padded_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = Vec<&T>> {
    let cap = 1usize << max.max(1).ilog2();
    items.chunks(cap).map(|chunk| {
        let mut padded: Vec<&T> = chunk.iter().collect();
        let last = padded[padded.len() - 1];
        padded.resize(chunk.len().next_power_of_two(), last);
        padded
    })
}

/// The values of one tuple, comma-separated.
pub(super) struct Tuple<'s> {
    statement: &'s mut Statement,
    first: bool,
}

impl Tuple<'_> {
    pub(super) fn bind<'q, T: Encode<'q, MySql> + Type<MySql> + 'q>(
        &mut self,
        value: T,
    ) -> &mut Self {
        if !std::mem::take(&mut self.first) {
            self.statement.sql.push(',');
        }
        self.statement.bind(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_are_written_compactly_with_one_placeholder_per_value() {
        let mut s = Statement::new("INSERT INTO t (a, b) VALUES ", 0);
        s.tuples([(1_i64, "x"), (2, "y")], |t, (a, b)| {
            t.bind(a).bind(b);
        });
        s.push(" ON DUPLICATE KEY UPDATE a = a");
        assert_eq!(
            s.sql,
            "INSERT INTO t (a, b) VALUES (?,?),(?,?) ON DUPLICATE KEY UPDATE a = a"
        );
        assert_eq!(s.args.len(), 4);
    }

    #[test]
    fn shaped_chunks_are_powers_of_two_in_order_and_cover_everything() {
        for max in [1, 2, 3, 500, 1000, 1024] {
            for len in 0..1200usize {
                let items: Vec<usize> = (0..len).collect();
                let chunks: Vec<&[usize]> = shaped_chunks(&items, max).collect();
                let joined: Vec<usize> = chunks.concat();
                assert_eq!(joined, items, "len {len}, max {max}");
                for c in &chunks {
                    assert!(
                        c.len().is_power_of_two() && c.len() <= max,
                        "{} of max {max}",
                        c.len()
                    );
                }
                // Largest first, and no two short chunks of one size.
                for w in chunks.windows(2) {
                    assert!(w[0].len() >= w[1].len());
                    assert!(w[0].len() > w[1].len() || w[0].len() == 1usize << max.ilog2());
                }
            }
        }
        for max in [1, 3, 500] {
            for len in 0..600usize {
                let items: Vec<usize> = (0..len).collect();
                let chunks: Vec<Vec<&usize>> = padded_chunks(&items, max).collect();
                assert_eq!(chunks.len(), len.div_ceil(1 << max.ilog2()));
                let mut seen: Vec<usize> = chunks.iter().flatten().map(|&&i| i).collect();
                seen.dedup();
                assert_eq!(
                    seen, items,
                    "every item once, in order, then repeats of the last"
                );
                assert!(chunks.iter().all(|c| c.len().is_power_of_two()));
            }
        }
        assert_eq!(
            shaped_chunks(&[0; 13], 8)
                .map(<[i32]>::len)
                .collect::<Vec<_>>(),
            [8, 4, 1]
        );
    }
}
