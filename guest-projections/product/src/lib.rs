//! The `product` projection as a WebAssembly component; the flattening itself is
//! `projection_flatten::PRODUCT`.

projection_sdk::component!(projection_sdk::flatten::PRODUCT);
