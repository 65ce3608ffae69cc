//! The `order` projection as a WebAssembly component; the flattening itself is
//! `projection_flatten::ORDER`.

projection_sdk::component!(projection_sdk::flatten::ORDER);
