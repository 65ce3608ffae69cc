//! Which database errors are about the data (permanent: find the event and
//! dead-letter it) and which are about the database (transient: retry).

use sqlx::mysql::MySqlDatabaseError;

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The database refused the data (too long, out of range, a key conflict,
    /// a broken foreign key, a missing value): retrying will not help; find
    /// the event.
    #[error("the database refused the data: {0}")]
    Data(String),
    /// The database is unavailable or the transaction lost a race (a closed
    /// list: connection lost or refused, deadlock, lock wait timeout, server
    /// shutting down, out of resources, access revoked): retry later.
    #[error("database unavailable or contended: {0}")]
    Transient(#[source] sqlx::Error),
    /// Neither: retried a bounded number of times, then its events are
    /// dead-lettered as `unclassified`.
    #[error("unclassified database error: {0}")]
    Unclassified(#[source] sqlx::Error),
    /// The stored position of a partition is not where this host left it
    /// (a replay reset it, or another consumer moved it): nothing was
    /// written; re-read the positions and seek.
    #[error("stored positions moved: {0:?}")]
    Moved(Vec<(String, i32)>),
}

/// MySQL error numbers that mean the data itself is unacceptable.
const DATA_ERRORS: [u16; 14] = [
    1048, // column cannot be null
    1054, // unknown column (a row op naming a column the table lost)
    1062, // duplicate entry
    1264, // out of range
    1265, // data truncated
    1292, // incorrect value (dates)
    1364, // field has no default value
    1366, // incorrect string value
    1406, // data too long
    1451, // a child row still refers to it
    1452, // no parent row
    1690, // value out of range in an expression
    3140, // invalid JSON
    4025, // CHECK constraint failed
];

/// MySQL error numbers that mean the database, not the data: worth a retry.
const TRANSIENT_ERRORS: [u16; 25] = [
    1021, // disk full
    1030, // storage engine error
    1037, // out of memory
    1038, // out of sort memory
    1040, // too many connections
    1041, // out of memory
    1044, // access denied to the database (an operator fixes grants)
    1045, // access denied
    1053, // server shutdown in progress
    1114, // table full
    1142, // command denied
    1180, // error during commit
    1205, // lock wait timeout
    1213, // deadlock
    1227, // privilege needed
    1290, // --read-only
    1317, // query interrupted
    1461, // max_prepared_stmt_count reached (server-wide: other clients' statements count)
    1836, // read-only mode
    1927, // connection killed (MariaDB)
    1969, // statement timeout (MariaDB max_statement_time)
    2006, // server has gone away
    2013, // lost connection during query
    3024, // statement timeout (MySQL max_execution_time)
    4031, // disconnected for inactivity (MySQL 8)
];

impl From<sqlx::Error> for ExecError {
    fn from(e: sqlx::Error) -> Self {
        // A value the driver cannot encode will not encode on a retry.
        if let sqlx::Error::Encode(cause) = &e {
            return ExecError::Data(format!("a value could not be encoded: {cause}"));
        }
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => ExecError::Transient(e),
            sqlx::Error::Database(db) => {
                match db
                    .try_downcast_ref::<MySqlDatabaseError>()
                    .map(|m| m.number())
                {
                    Some(n) if DATA_ERRORS.contains(&n) => ExecError::Data(db.message().to_owned()),
                    Some(n) if TRANSIENT_ERRORS.contains(&n) => ExecError::Transient(e),
                    _ => ExecError::Unclassified(e),
                }
            }
            _ => ExecError::Unclassified(e),
        }
    }
}

impl ExecError {
    /// Whether `e` is a duplicate key (1062).
    pub fn is_duplicate_key(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(db)
            if db.try_downcast_ref::<MySqlDatabaseError>().is_some_and(|m| m.number() == 1062))
    }
}
