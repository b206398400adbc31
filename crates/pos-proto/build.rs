//! Generates the protobuf and gRPC code from `proto/` at the workspace root.
//! Uses the vendored protoc unless `PROTOC` names another one.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let protos = ["pos/terminal/v1/terminal.proto", "pos/gateway/v1/gateway.proto", "pos/reader/v1/reader.proto"]
        .map(|p| root.join(p));
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let includes = [root.clone(), protoc_bin_vendored::include_path()?];
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("pos_descriptor.bin"))
        .compile_with_config(config, &protos, &includes)?;
    println!("cargo:rerun-if-env-changed=PROTOC");
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Ok(())
}
