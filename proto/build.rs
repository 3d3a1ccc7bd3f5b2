//! Compiles `holdfast/v1/holdfast.proto` with a pure-Rust protobuf compiler,
//! so building holdfast needs no `protoc` on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=holdfast/v1/holdfast.proto");
    let fds = protox::compile(["holdfast/v1/holdfast.proto"], ["."])?;
    // Smaller per-stream buffers than tonic's default (src/codec.rs): a coordinator holds one
    // stream per agent.
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
