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
}
