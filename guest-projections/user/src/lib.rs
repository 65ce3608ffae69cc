//! The `user` projection as a WebAssembly component; the flattening itself is
//! `projection_flatten::USER`.

projection_sdk::component!(projection_sdk::flatten::USER);
