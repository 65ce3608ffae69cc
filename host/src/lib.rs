//! The projection host.
