//! Tools around the projection host, kept out of the product crate: the
//! seeded stream generator, table snapshots and checksums, and staged
//! component builds. The `bench` and `drills` binaries and the host's
//! integration tests use them.

pub mod audit;
pub mod generate;
pub mod oracle;
pub mod process;
pub mod snapshot;

/// A copy of a component with a custom section appended: the same code under
/// another digest, as a new build of an unchanged projection would be. The
/// drills and tests stage hot reloads with it.
pub fn rebuilt(component: &[u8], tag: &str) -> Vec<u8> {
    use wasm_encoder::ComponentSection as _;
    let mut out = component.to_vec();
    wasm_encoder::CustomSection {
        name: "projector-build".into(),
        data: tag.as_bytes().into(),
    }
    .append_to_component(&mut out);
    out
}
