//! The user projection built against `projector:projection@1.0.0`, the
//! contract as it was released (a verbatim copy in `wit/`): no `tables`
//! export, so the host reconciles nothing for it and checks its writes
//! against the live tables. A 1.1 host must keep loading and running it.

#[allow(clippy::too_many_arguments)]
mod bindings {
    wit_bindgen::generate!({
        world: "projection",
        path: "wit",
    });
}

mod convert {
    projection_sdk::__conversions!(super::bindings::projector::projection::types);
}

use bindings::projector::projection::types::{Envelope, Info, ProjectionError, RowOp};

struct Component;

impl bindings::Guest for Component {
    fn describe() -> Info {
        let mut info = convert::describe(&projection_sdk::flatten::USER);
        info.version = format!("{}-wit1.0", env!("CARGO_PKG_VERSION"));
        info
    }

    fn project(event: Envelope) -> Result<Vec<RowOp>, ProjectionError> {
        convert::project(&projection_sdk::flatten::USER, event)
    }
}

bindings::export!(Component with_types_in bindings);
