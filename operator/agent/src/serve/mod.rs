//! The agent's local surfaces and what they read: the unix-socket API weir-cni and the CLI
//! speak (`api`), socket and server limits (`local`), the read view the node's writer
//! publishes (`view`) and the Prometheus metrics (`metrics`). Reads never wait for the writer.
pub mod api;
pub mod local;
pub mod metrics;
pub mod view;
