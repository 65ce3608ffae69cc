//! The `user` projection unchanged except for its version (its Cargo.toml's,
//! which the SDK reports), which is longer
//! than the 64 characters a component may declare (its label must fit
//! `processed_events.component`). The host must refuse it at load and on hot
//! reload, and keep serving the component it had.

#![cfg_attr(target_arch = "wasm32", no_std)]

use projection_sdk::flatten::{self, Domain};

const USER_LONG_VERSION: Domain = Domain {
    name: "user",
    info: flatten::USER.info,
    project: flatten::USER.project,
};

projection_sdk::component!(USER_LONG_VERSION);
