//! The agent's local surfaces and what they read: the unix-socket API weir-cni and the CLI
//! speak (`api`), socket and server limits (`local`), the read view the node's writer
//! publishes (`view`) and the Prometheus metrics (`metrics`). Reads never wait for the writer.
use weir_operator_api::ApiError;

pub mod api;
pub mod local;
pub mod metrics;
pub mod view;

/// An API error with code `code`, saying `msg` and why (`e`).
pub(crate) fn api_err(code: u32, msg: impl Into<String>, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(code, msg, e.to_string())
}
