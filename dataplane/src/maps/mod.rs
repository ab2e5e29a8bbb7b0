//! Typed map wrappers, one file per map, each a trait with the kernel implementation and an
//! in-memory fake (for reconcile tests without root).
pub mod endpoints;
pub mod tunnel;

pub use endpoints::{EndpointMap, Endpoints, FakeEndpoints};
pub use tunnel::{FakeTunnel, Tunnel, TunnelMap};
