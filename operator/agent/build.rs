//! Generates the Hubble-compatible Observer service and messages (proto/) with tonic-prost-build.
//! Needs `protoc` (Debian: protobuf-compiler, installed by scripts/setup.sh).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    #[cfg(feature = "hubble")]
    tonic_prost_build::configure()
        // Filter fields weir does not know are refused, not dropped (observe/strict.rs).
        .codec_path("crate::observe::strict::StrictCodec")
        // What weir's protos declare, for the test that checks them against Hubble's
        // (observe/hubble_api.rs).
        .file_descriptor_set_path(std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("weir_protos.bin"))
        .compile_protos(&["proto/observer.proto"], &["proto"])?;
    Ok(())
}
