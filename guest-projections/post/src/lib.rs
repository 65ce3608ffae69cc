//! The `post` projection as a WebAssembly component; the flattening itself is
//! `projection_flatten::POST`.

projection_sdk::component!(projection_sdk::flatten::POST);
