//! Routing and projecting: each message is decoded, routed by its event type
//! to its domain's projection, projected, and its operations validated.

use std::time::Instant;

use rdkafka::Message as _;
use rdkafka::message::OwnedMessage;

use crate::dlq::{ComponentRef, Failure};
use crate::ops::Shared;
use crate::sandbox::{GuestFailure, Projection, Registry, envelope_view};
use crate::sink::{self, Applied, Schema};

/// The component behind a projection, as dead letters name it.
pub fn component_ref(p: &Projection) -> ComponentRef {
    ComponentRef {
        name: p.info().domain.clone(),
        version: p.info().version.clone(),
        digest: p.digest().to_owned(),
    }
}

/// An event projected and validated, with where it came from.
#[derive(Debug, Clone)]
pub struct Projected {
    pub inner: Applied,
    pub source_index: usize,
    pub component_ref: Option<ComponentRef>,
}

/// Projects each message through its domain's projection (one instance per
/// domain for the whole batch) and validates the operations.
pub fn project_all(
    registry: &Registry,
    schema: &Schema,
    messages: &[OwnedMessage],
) -> (Vec<Projected>, Vec<(usize, Failure)>) {
    project_all_observed(registry, schema, messages, usize::MAX, None)
}

/// [`project_all`] refusing messages over `max_bytes` and timing each guest
/// call into the metrics of `shared`.
pub fn project_all_observed(
    registry: &Registry,
    schema: &Schema,
    messages: &[OwnedMessage],
    max_bytes: usize,
    shared: Option<&Shared>,
) -> (Vec<Projected>, Vec<(usize, Failure)>) {
    let mut applied = Vec::with_capacity(messages.len());
    let mut failed = Vec::new();
    for (index, m) in messages.iter().enumerate() {
        let size = m.payload().map_or(0, <[u8]>::len);
        if size > max_bytes {
            failed.push((
                index,
                Failure {
                    class: "too_large",
                    message: format!("the message has {size} bytes, over the limit of {max_bytes}"),
                    component: None,
                },
            ));
            continue;
        }
        match project_one(registry, schema, m, shared) {
            Ok((inner, component)) => applied.push(Projected {
                component_ref: Some(component),
                inner,
                source_index: index,
            }),
            Err(failure) => failed.push((index, failure)),
        }
    }
    (applied, failed)
}

fn project_one(
    registry: &Registry,
    schema: &Schema,
    m: &OwnedMessage,
    shared: Option<&Shared>,
) -> Result<(Applied, ComponentRef), Failure> {
    let fail = |class: &'static str, message: String, component: Option<ComponentRef>| Failure {
        class,
        message,
        component,
    };
    let Some(payload) = m.payload() else {
        return Err(fail(
            "invalid_envelope",
            "message has no payload".into(),
            None,
        ));
    };
    let envelope: events::RawEnvelope = events::Envelope::from_slice(payload)
        .map_err(|e| fail("invalid_envelope", e.to_string(), None))?;
    if !envelope.unknown_fields.is_empty()
        && let Some(shared) = shared
    {
        shared
            .metrics
            .note_unknown_fields(&envelope.event_type, &envelope.unknown_fields);
    }
    let projection = registry.route(&envelope.event_type).ok_or_else(|| {
        fail(
            "unknown_event_type",
            format!("no projection handles event type {:?}", envelope.event_type),
            None,
        )
    })?;
    let component = component_ref(projection);
    let started = Instant::now();
    let ops = envelope_view(&envelope, |env| match projection {
        Projection::Wasm(c) => c.session().project(env),
        Projection::Native(n) => (n.domain.project)(env).map_err(GuestFailure::Rejected),
    });
    let info = projection.info();
    if let Some(shared) = shared {
        shared
            .metrics
            .guest_call_seconds
            .with_label_values(&[info.domain.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    let ops = ops.map_err(|e| fail(e.class(), e.to_string(), Some(component.clone())))?;
    let ops = ops
        .into_iter()
        .map(|op| sink::validate_owned(op, info, schema))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.class(), e.to_string(), Some(component.clone())))?;
    let applied = Applied {
        event_id: envelope.event_id.to_string(),
        event_type: envelope.event_type.clone(),
        timestamp: envelope.timestamp.naive_utc(),
        entity_id: envelope.entity_id.clone(),
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        component: projection.label(),
        ops,
    };
    Ok((applied, component))
}
