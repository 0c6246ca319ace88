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
    // The public API: a method a hand-written service (a test double)
    // does not write answers UNIMPLEMENTED, so a new rpc breaks none of
    // them. The node's `Charging` methods are made from the operation table
    // (`src/ops.rs`). The internal transport keeps every method required.
    tonic_prost_build::configure()
        .skip_protoc_run()
        .generate_default_stubs(true)
        .compile_fds(protox::compile(&files[..2], ["proto"])?)?;
    tonic_prost_build::configure()
        .skip_protoc_run()
        .compile_fds(protox::compile(&files[2..], ["proto"])?)?;
    Ok(())
}
