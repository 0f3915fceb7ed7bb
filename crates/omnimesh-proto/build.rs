//! Compiles every `.proto` under `proto/` with protox (pure Rust, no system `protoc`),
//! generates tonic/prost code and writes the descriptor set used by reflection.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use prost::Message as _;

fn main() -> anyhow::Result<()> {
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = proto_files(&proto_root.join("omnimesh"))?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptor_set =
        protox::compile(&files, [&proto_root]).context("compiling the protos with protox")?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR is set by cargo")?);
    std::fs::write(
        out_dir.join("omnimesh_descriptor.bin"),
        descriptor_set.encode_to_vec(),
    )
    .context("writing the descriptor set")?;

    tonic_prost_build::configure()
        // Every RPC answers UNIMPLEMENTED until its service implements it.
        .generate_default_stubs(true)
        .codec_path("crate::codec::Codec")
        // Plaintext to encrypt is decoded without a copy (a slice of the received
        // message) and a client can resend it without copying it; Echo's payload too,
        // so that the transport baseline Encrypt is measured against gets the same.
        .bytes(".omnimesh.engine.v1.EncryptItem.plaintext")
        .bytes(".omnimesh.engine.v1.EchoRequest.payload")
        .bytes(".omnimesh.engine.v1.EchoResponse.payload")
        .compile_fds(descriptor_set)
        .context("generating tonic code")?;
    Ok(())
}

/// Every `.proto` file below `dir`, sorted so the generated code is reproducible.
fn proto_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}
