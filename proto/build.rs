//! Compiles the .proto files with protox (pure Rust; no system protoc).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/charging.proto",
        "proto/admin.proto",
        "proto/raft.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor = out.join("charging_descriptor.bin");
    std::fs::write(&descriptor, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .skip_protoc_run()
        .compile_fds(fds)?;
    Ok(())
}
