//! The `supplier` projection as a WebAssembly component; the flattening itself is
//! `projection_flatten::SUPPLIER`.

#![cfg_attr(target_arch = "wasm32", no_std)]

projection_sdk::component!(projection_sdk::flatten::SUPPLIER);
