//! The benchmarks' kit, shared by every `weir-*-bench` binary in `src/bin/`: a network
//! namespace and bpffs of the bench's own with the datapath loaded in it (`env`), order
//! statistics (`stats`) and aligned result tables (`table`). Namespaces are made with the one
//! helper the tests use too (`weir_tests::netns`).
pub mod env;
pub mod stats;
pub mod table;
