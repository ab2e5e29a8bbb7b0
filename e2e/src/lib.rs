//! The lab as a library: `lab` (a virtual cluster of network namespaces running weir-agent,
//! with pods made through the real `weir-cni`), `controllers` (what kube-apiserver and
//! controller-manager would do for Services here) and `probe` (the connection prober).
//! `weir-lab` (`main.rs`) is its command line; the e2e tests drive that command.
pub mod containerd;
pub mod controllers;
pub mod cri;
pub mod daemonset;
pub mod image;
pub mod lab;
pub mod probe;
