//! The `user` projection unchanged except for its version, which is longer
//! than the 64 characters a component may declare (its label must fit
//! `processed_events.component`). The host must refuse it at load and on hot
//! reload, and keep serving the component it had.

use projection_sdk::flatten::{self, Domain, Info};

fn info() -> Info {
    let mut info = (flatten::USER.info)();
    info.version = format!("1.0.0+build.{}", "0123456789".repeat(6));
    info
}

const USER_LONG_VERSION: Domain = Domain {
    name: "user",
    info,
    project: flatten::USER.project,
};

projection_sdk::component!(USER_LONG_VERSION);
