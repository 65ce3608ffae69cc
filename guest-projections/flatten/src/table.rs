//! The typed tables a projection writes, declared as constants next to the
//! code that fills them: the one place a column is defined. The host creates
//! and widens the tables from these declarations (WIT `tables`, 1.1.0) and
//! `docs/schema.md` is generated from them.
//!
//! ```
//! use projection_flatten::{SqlType::*, table::{Table, not_null, nullable}};
//!
//! const USERS: Table = Table {
//!     name: "users",
//!     doc: "One row per user account.",
//!     columns: &[
//!         not_null("user_id", Varchar(24), "entity_id"),
//!         nullable("email", Varchar(255), "data.contact_info.primary_email"),
//!     ],
//!     primary_key: &["user_id"],
//!     unique_keys: &[],
//!     indexes: &[&["email"]],
//!     parent: None,
//! };
//! assert_eq!(USERS.def().columns.len(), 2);
//! ```

use crate::ops::{ColumnDef, ParentKey, SqlType, TableDef, TableUse};
use crate::prelude::*;

/// A table declaration.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    /// What one row is.
    pub doc: &'static str,
    pub columns: &'static [Col],
    pub primary_key: &'static [&'static str],
    pub unique_keys: &'static [&'static [&'static str]],
    pub indexes: &'static [&'static [&'static str]],
    pub parent: Option<Parent>,
}

/// A column declaration; see [`nullable`] and [`not_null`].
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub name: &'static str,
    pub sql_type: SqlType,
    pub nullable: bool,
    /// Where the value comes from.
    pub doc: &'static str,
}

/// A child table's reference to its parent.
#[derive(Debug, Clone, Copy)]
pub struct Parent {
    pub columns: &'static [&'static str],
    pub table: &'static str,
    pub references: &'static [&'static str],
    /// ON DELETE CASCADE.
    pub cascade: bool,
}

/// A column that admits NULL (a missing field gives NULL).
pub const fn nullable(name: &'static str, sql_type: SqlType, doc: &'static str) -> Col {
    Col {
        name,
        sql_type,
        nullable: true,
        doc,
    }
}

/// A column that never holds NULL (keys).
pub const fn not_null(name: &'static str, sql_type: SqlType, doc: &'static str) -> Col {
    Col {
        name,
        sql_type,
        nullable: false,
        doc,
    }
}

/// `created_at`: the document's own creation time.
pub const CREATED_AT: Col = nullable("created_at", SqlType::Datetime, "data.created_at");

/// `updated_at`: the document's own update time, else the event time.
pub const UPDATED_AT: Col = nullable(
    "updated_at",
    SqlType::Datetime,
    "data.updated_at, else the event time",
);

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

impl Table {
    /// The owned definition, as the WIT `tables` export returns it.
    pub fn def(&self) -> TableDef {
        TableDef {
            name: self.name.to_owned(),
            doc: self.doc.to_owned(),
            columns: self
                .columns
                .iter()
                .map(|c| ColumnDef {
                    name: c.name.to_owned(),
                    sql_type: c.sql_type,
                    nullable: c.nullable,
                    doc: c.doc.to_owned(),
                })
                .collect(),
            primary_key: strings(self.primary_key),
            unique_keys: self.unique_keys.iter().map(|k| strings(k)).collect(),
            indexes: self.indexes.iter().map(|k| strings(k)).collect(),
            parent: self.parent.map(|p| ParentKey {
                columns: strings(p.columns),
                table: p.table.to_owned(),
                references: strings(p.references),
                cascade: p.cascade,
            }),
        }
    }

    /// The columns a projection writes: all but those the database assigns.
    pub fn writes(&self) -> TableUse {
        TableUse {
            table: self.name.to_owned(),
            columns: self
                .columns
                .iter()
                .filter(|c| c.sql_type != SqlType::Serial)
                .map(|c| c.name.to_owned())
                .collect(),
        }
    }
}
