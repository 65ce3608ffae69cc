//! The producer backend.
