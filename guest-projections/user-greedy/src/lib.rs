//! The `user` projection declaring `posts` besides `users`: a table the
//! default grants give only the post domain. The host must refuse it at
//! load and on hot reload (and keep serving the component it had), and a
//! replay must never clear `posts` through it.

#![cfg_attr(target_arch = "wasm32", no_std)]

use projection_sdk::flatten::{self, Domain, Info};

fn info() -> Info {
    let mut info = (flatten::USER.info)();
    let post = (flatten::POST.info)();
    info.writes.extend(post.writes);
    info.tables.extend(post.tables);
    info
}

const USER_GREEDY: Domain = Domain {
    name: "user",
    info,
    project: flatten::USER.project,
};

projection_sdk::component!(USER_GREEDY);
