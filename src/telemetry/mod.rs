//! What the bridge tells about itself while it runs: Prometheus metrics and OpenTelemetry traces.
//! Every layer reports here; nothing here depends on the data path.

pub mod metrics;
pub mod traces;

pub use traces::{Telemetry, TelemetryError, end_producer_span, end_server_span};
