//! The SQL the host sends must run on MySQL 8 as well as on MariaDB (the
//! seed's database is MySQL; the local stack is MariaDB, and MySQL 8 cannot
//! be installed here). These tests scan the migrations and every statement
//! fragment in the host's source for syntax only MariaDB accepts, and check
//! that a database which applied a migration's old, MariaDB-only text still
//! migrates.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest as _, Sha384};

/// Constructs MariaDB accepts and MySQL 8.0/8.4 rejects (or reads
/// differently), as (what, pattern words in order within one statement).
const MARIADB_ONLY: &[(&str, &[&str])] = &[
    ("DROP INDEX IF EXISTS", &["DROP", "INDEX", "IF", "EXISTS"]),
    ("DROP KEY IF EXISTS", &["DROP", "KEY", "IF", "EXISTS"]),
    ("DROP COLUMN IF EXISTS", &["DROP", "COLUMN", "IF", "EXISTS"]),
    (
        "DROP FOREIGN KEY IF EXISTS",
        &["DROP", "FOREIGN", "KEY", "IF", "EXISTS"],
    ),
    (
        "DROP CONSTRAINT IF EXISTS",
        &["DROP", "CONSTRAINT", "IF", "EXISTS"],
    ),
    (
        "ADD COLUMN IF NOT EXISTS",
        &["ADD", "COLUMN", "IF", "NOT", "EXISTS"],
    ),
    (
        "ADD INDEX IF NOT EXISTS",
        &["ADD", "INDEX", "IF", "NOT", "EXISTS"],
    ),
    (
        "ADD KEY IF NOT EXISTS",
        &["ADD", "KEY", "IF", "NOT", "EXISTS"],
    ),
    (
        "ADD UNIQUE ... IF NOT EXISTS",
        &["ADD", "UNIQUE", "IF", "NOT", "EXISTS"],
    ),
    (
        "CREATE INDEX IF NOT EXISTS",
        &["CREATE", "INDEX", "IF", "NOT", "EXISTS"],
    ),
    ("MODIFY IF EXISTS", &["MODIFY", "IF", "EXISTS"]),
    ("CHANGE IF EXISTS", &["CHANGE", "IF", "EXISTS"]),
    (
        "CREATE OR REPLACE TABLE",
        &["CREATE", "OR", "REPLACE", "TABLE"],
    ),
    ("CREATE SEQUENCE", &["CREATE", "SEQUENCE"]),
    ("NEXTVAL", &["NEXTVAL("]),
    ("RETURNING", &["RETURNING"]),
    ("SET STATEMENT ... FOR", &["SET", "STATEMENT"]),
    ("max_statement_time", &["MAX_STATEMENT_TIME"]),
    ("LIMIT ROWS EXAMINED", &["ROWS", "EXAMINED"]),
    ("JSON_DETAILED", &["JSON_DETAILED("]),
    ("JSON_COMPACT", &["JSON_COMPACT("]),
    ("JSON_LOOSE", &["JSON_LOOSE("]),
    ("WAIT/NOWAIT on DDL", &["ALTER", "TABLE", "WAIT"]),
];

/// Splits SQL text into statements of upper-cased words (comments and
/// string literals removed, punctuation kept on the word it ends).
fn statements(sql: &str) -> Vec<Vec<String>> {
    let mut clean = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                clean.push('\n');
            }
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                }
                clean.push_str("''");
            }
            _ => clean.push(c),
        }
    }
    clean
        .split(';')
        .map(|s| {
            s.split(|c: char| c.is_whitespace() || c == ',' || c == '`' || c == ')')
                .filter(|w| !w.is_empty())
                .map(str::to_uppercase)
                .collect()
        })
        .collect()
}

/// The first MariaDB-only construct in `sql`, if any.
fn mariadb_only(sql: &str) -> Option<&'static str> {
    for words in statements(sql) {
        for (what, pattern) in MARIADB_ONLY {
            let mut at = 0;
            let found = pattern.iter().all(|p| {
                let pos = words[at..].iter().position(|w| {
                    if p.ends_with('(') {
                        w.starts_with(p)
                    } else {
                        w == p
                    }
                });
                pos.map(|i| at += i + 1).is_some()
            });
            if found {
                return Some(what);
            }
        }
    }
    None
}

/// The SQL in Rust source: the contents of its string literals (plain and
/// raw), one fragment per literal.
fn string_literals(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if source[i..].starts_with("//") {
            i += source[i..].find('\n').unwrap_or(source.len() - i);
            continue;
        }
        if source[i..].starts_with("r#\"") {
            let end = source[i + 3..]
                .find("\"#")
                .map_or(source.len(), |e| i + 3 + e);
            out.push(source[i + 3..end].to_owned());
            i = end + 2;
            continue;
        }
        if bytes[i] == b'\'' && i + 2 < bytes.len() && bytes[i + 2] == b'\'' {
            i += 3; // a char literal such as '"'
            continue;
        }
        if bytes[i] == b'"' {
            let mut j = i + 1;
            let mut text = String::new();
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    // An escape reads as one space; a line continuation also
                    // skips the next line's indentation, as Rust does.
                    j += 2;
                    text.push(' ');
                    if bytes[j - 1] == b'\n' {
                        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                            j += 1;
                        }
                    }
                    continue;
                }
                let c = source[j..].chars().next().unwrap();
                text.push(c);
                j += c.len_utf8();
            }
            out.push(text);
            i = j + 1;
            continue;
        }
        i += source[i..].chars().next().map_or(1, char::len_utf8);
    }
    out
}

/// Whether a literal is SQL: it starts with an upper-case SQL keyword
/// (statement fragments such as " ON DUPLICATE KEY UPDATE " included), which
/// log and error messages do not.
fn looks_like_sql(literal: &str) -> bool {
    const KEYWORDS: [&str; 16] = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "ALTER", "CREATE", "DROP", "SET", "REPLACE",
        "TRUNCATE", "WITH", "ON", "AND", "WHERE", "VALUES", "FROM",
    ];
    let first = literal.split_whitespace().next().unwrap_or("");
    KEYWORDS.contains(&first)
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

#[test]
fn the_scan_recognises_mariadb_only_syntax() {
    // The scan itself, on statements of both kinds.
    for sql in [
        "ALTER TABLE t DROP INDEX IF EXISTS k;",
        "ALTER TABLE t ADD COLUMN IF NOT EXISTS c INT",
        "alter table `t` add index if not exists (c)",
        "CREATE OR REPLACE TABLE t (a INT)",
        "DELETE FROM t WHERE a = 1 RETURNING a",
        "SET STATEMENT max_statement_time=1 FOR SELECT 1",
    ] {
        assert!(mariadb_only(sql).is_some(), "{sql}");
    }
    for sql in [
        "CREATE TABLE IF NOT EXISTS t (a INT)",
        "DROP TABLE IF EXISTS t",
        "ALTER TABLE t DROP INDEX k",
        "INSERT INTO t (a) VALUES (?) ON DUPLICATE KEY UPDATE a = IF(VALUES(`a`) >= a, VALUES(`a`), a)",
        "SELECT 'RETURNING' FROM t -- RETURNING",
    ] {
        assert_eq!(mariadb_only(sql), None, "{sql}");
    }
    assert_eq!(
        string_literals(
            r#"let q = "DROP INDEX \
             IF EXISTS k"; // "RETURNING""#
        ),
        ["DROP INDEX  IF EXISTS k"],
        "a continuation joins the lines with the space before it and one more"
    );
}

#[test]
fn migrations_and_statements_use_no_mariadb_only_syntax() {
    let mut problems = Vec::new();
    let mut migrations = Vec::new();
    files(&repo().join("host/migrations"), "sql", &mut migrations);
    assert!(migrations.len() >= 4, "{migrations:?}");
    for path in &migrations {
        if let Some(what) = mariadb_only(&std::fs::read_to_string(path).unwrap()) {
            problems.push(format!("{}: {what}", path.display()));
        }
    }
    let mut checked = 0;
    let mut sources = Vec::new();
    files(&repo().join("host/src"), "rs", &mut sources);
    files(&repo().join("tools/src"), "rs", &mut sources);
    for path in &sources {
        let literals = string_literals(&std::fs::read_to_string(path).unwrap());
        for literal in literals.iter().filter(|l| looks_like_sql(l)) {
            checked += 1;
            if let Some(what) = mariadb_only(literal) {
                problems.push(format!("{}: {what} in {literal:?}", path.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "MariaDB-only SQL:\n{}",
        problems.join("\n")
    );
    assert!(
        checked > 30,
        "only {checked} SQL literals found: is the scan reading the source?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_applied_the_old_text_of_a_rewritten_migration_still_migrates() {
    let db = TestDb::new().await;
    projector_host::sink::migrate(&db.pool).await.unwrap();
    let old = include_str!("../src/sink/0004_mariadb_only.sql.txt");
    let checksum = |pool| async move {
        sqlx::query_scalar::<_, Vec<u8>>("SELECT checksum FROM _sqlx_migrations WHERE version = 4")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let current = checksum(&db.pool).await;
    // As a database that applied 0004 before it was rewritten.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = ? WHERE version = 4")
        .bind(Sha384::digest(old.as_bytes()).to_vec())
        .execute(&db.pool)
        .await
        .unwrap();
    projector_host::sink::migrate(&db.pool).await.unwrap();
    assert_eq!(checksum(&db.pool).await, current);
    // Any other text is still refused, as sqlx refuses an edited migration.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = ? WHERE version = 4")
        .bind(Sha384::digest(b"ALTER TABLE something else").to_vec())
        .execute(&db.pool)
        .await
        .unwrap();
    let err = projector_host::sink::migrate(&db.pool).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("previously applied but has been modified"),
        "{err:#}"
    );
    db.drop_db().await;
}
