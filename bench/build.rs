//! Compiles the echo baseline proto with protox (no system protoc). Its
//! messages are the charging.v1 ones from the charging-proto crate.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    println!("cargo:rerun-if-changed=../proto/proto/charging.proto");
    let fds = protox::compile(["proto/echo.proto"], ["proto", "../proto/proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".charging.v1", "::charging_proto::v1")
        .skip_protoc_run()
        .compile_fds(fds)?;
    Ok(())
}
