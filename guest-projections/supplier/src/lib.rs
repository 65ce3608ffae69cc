//! The `supplier` projection as a WebAssembly component; the flattening itself is
//! `projection_flatten::SUPPLIER`.

projection_sdk::component!(projection_sdk::flatten::SUPPLIER);
