//! What the datapath reports, made readable: the ring-buffer reader (`events`), flows enriched
//! with pods, Services and the policies that judged them (`flows`), DNS message parsing
//! (`dns`), HTTP/1.x parsing and request–response pairing (`http`), the bounded waiting tables
//! both pair with (`bounded`), exec records' pods (`exec`) and Hubble's observer API over gRPC
//! (`grpc`). Its own state and locks: it never waits for the node's writer.
pub mod bounded;
pub mod dns;
pub mod events;
pub mod exec;
pub mod flows;
#[cfg(feature = "hubble")]
pub mod grpc;
pub mod h2;
pub mod http;
