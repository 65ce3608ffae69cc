//! The projector host: consumes the domain topics, runs each event through
//! the WebAssembly projection component of its domain, and writes the
//! resulting row operations to MySQL with exactly-once effect.
//!
//! The modules follow the data flow:
//!
//! | module      | step                                                          |
//! |-------------|---------------------------------------------------------------|
//! | `consume`   | Kafka client, batches, pause, positions                       |
//! | `pipeline`  | the loop: route and project a batch, then the writer commits  |
//! | `sandbox`   | wasmtime runtime, WIT contract, registry, hot reload          |
//! | `sink`      | validation, row SQL, bookkeeping, error classes, schema, reconciliation |
//! | `dlq`       | the dead-letter wire type, publishing, redrive                |
//! | `ops`       | shared state, metrics, lag monitor, admin server, replay      |
//! | `settings`  | typed settings (depends on nothing)                           |
//! | `cli`       | the subcommands behind `projector`                            |
//! | `author`    | `projector new` and `projector test`: the authoring loop      |
//! | `schema_doc`| `docs/schema.md`'s reference, generated from the declarations |

pub mod author;
pub mod cli;
pub mod consume;
pub mod dlq;
pub mod ops;
pub mod pipeline;
pub mod sandbox;
pub mod schema_doc;
pub mod settings;
pub mod shutdown;
pub mod sink;
