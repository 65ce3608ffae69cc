//! Which database errors are about the data (permanent: find the event and
//! dead-letter it) and which are about the database (transient: retry).

use sqlx::mysql::MySqlDatabaseError;

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The database refused the data (too long, out of range, a key conflict,
    /// a broken foreign key): retrying will not help; find the event.
    #[error("the database refused the data: {0}")]
    Data(String),
    /// The database is unavailable or the transaction lost a race (deadlock,
    /// lock wait timeout, lost connection): retry later.
    #[error("database unavailable or contended: {0}")]
    Transient(#[source] sqlx::Error),
    /// The stored position of a partition is not where this host left it
    /// (a replay reset it, or another consumer moved it): nothing was
    /// written; re-read the positions and seek.
    #[error("stored positions moved: {0:?}")]
    Moved(Vec<(String, i32)>),
}

/// MySQL error numbers that mean the data itself is unacceptable.
const DATA_ERRORS: [u16; 13] = [
    1048, 1054, 1062, 1264, 1265, 1292, 1366, 1406, 1451, 1452, 3140, 4025, 1690,
];

impl From<sqlx::Error> for ExecError {
    fn from(e: sqlx::Error) -> Self {
        // A value the driver cannot encode will not encode on a retry.
        if let sqlx::Error::Encode(cause) = &e {
            return ExecError::Data(format!("a value could not be encoded: {cause}"));
        }
        if let sqlx::Error::Database(db) = &e
            && let Some(mysql) = db.try_downcast_ref::<MySqlDatabaseError>()
            && DATA_ERRORS.contains(&mysql.number())
        {
            return ExecError::Data(mysql.message().to_owned());
        }
        ExecError::Transient(e)
    }
}
