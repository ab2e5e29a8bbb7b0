//! What the datapath reports, made readable: the ring-buffer reader (`events`), flows enriched
//! with pods, Services and the policies that judged them (`flows`), DNS message parsing
//! (`dns`), HTTP/1.x parsing and request–response pairing (`http`), the bounded waiting tables
//! both pair with (`bounded`), HTTP/2 and gRPC (`h2`), exec records' pods (`exec`), Hubble's
//! observer API over gRPC (`grpc`; `authority` lets clients of any gRPC implementation use its
//! unix socket; `strict` refuses filter fields it does not know; `mask` applies field masks;
//! `hubble_api` holds the facts of the Hubble API weir targets) and the cluster-wide relay in front of the nodes' (`relay`, finding them with `discovery`). Its own state and locks: it never waits for the node's writer.
#[cfg(feature = "hubble")]
pub mod authority;
pub mod bounded;
#[cfg(feature = "hubble")]
pub mod discovery;
pub mod dns;
pub mod events;
pub mod exec;
pub mod flows;
#[cfg(feature = "hubble")]
pub mod grpc;
pub mod h2;
pub mod hpack;
pub mod http;
#[cfg(feature = "hubble")]
pub mod hubble_api;
pub mod listeners;
#[cfg(feature = "hubble")]
pub mod mask;
#[cfg(feature = "hubble")]
pub mod relay;
#[cfg(feature = "hubble")]
pub mod strict;
