//! Pods' attachments on this node: the endpoint store (the record of every attachment and of
//! IPAM), address allocation, the links, addresses and routes made through netlink, the
//! runtime's CNI cache read to rebuild a lost store, and the conflist the agent installs when
//! it is ready. [`crate::node::Node`] is their one writer.
pub mod cni_cache;
pub mod conflist;
pub mod ipam;
pub mod netlink;
pub mod store;
