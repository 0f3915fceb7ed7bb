//! EncryptStream and DecryptStream through a real tonic client: large payloads in
//! pieces, tampering, truncation, relabelling and the size limit.

use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_proto::engine::v1::stream_chunk::Part;
use omnimesh_proto::engine::v1::*;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

use super::start;

fn request(header: StreamHeader, payload: &[u8], piece: usize) -> Vec<StreamChunk> {
    let mut messages = vec![StreamChunk {
        part: Some(Part::Header(header)),
    }];
    messages.extend(payload.chunks(piece).map(|bytes| StreamChunk {
        part: Some(Part::Data(bytes.to_vec())),
    }));
    messages
}

/// Runs a stream call; the response header and the concatenated data, or the status.
async fn run(
    client: &mut EngineClient<Channel>,
    encrypt: bool,
    messages: Vec<StreamChunk>,
) -> Result<(StreamHeader, Vec<u8>), tonic::Status> {
    let input = tokio_stream::iter(messages);
    let mut responses = if encrypt {
        client.encrypt_stream(input).await?.into_inner()
    } else {
        client.decrypt_stream(input).await?.into_inner()
    };
    let mut header = None;
    let mut bytes = Vec::new();
    while let Some(message) = responses.next().await {
        match message?.part {
            Some(Part::Header(h)) => header = Some(h),
            Some(Part::Data(d)) => bytes.extend(d),
            None => {}
        }
    }
    Ok((header.expect("a response header"), bytes))
}

fn key_header(name: &str, ad: &[u8]) -> StreamHeader {
    StreamHeader {
        key_name: name.into(),
        associated_data: ad.to_vec(),
        ..StreamHeader::default()
    }
}

#[tokio::test]
async fn large_payloads_round_trip_and_tampering_fails() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    client
        .create_key(CreateKeyRequest {
            name: "files".into(),
            ..CreateKeyRequest::default()
        })
        .await
        .unwrap();
    let payload: Vec<u8> = (0..3_000_000_u32).map(|i| (i % 251) as u8).collect();
    let (header, sealed) = run(
        &mut client,
        true,
        request(key_header("files", b"file-1"), &payload, 100_000),
    )
    .await
    .unwrap();
    assert_eq!(header.key_version, 1);
    assert!(sealed.starts_with(b"OMS1\0\0\0\x01"));
    // 8-byte prefix, 56-byte header, a 16-byte tag per 16 KiB chunk (and the final one).
    assert_eq!(
        sealed.len(),
        8 + 56 + payload.len() + (payload.len() / 16384 + 1) * 16
    );
    let (_, opened) = run(
        &mut client,
        false,
        request(key_header("files", b"file-1"), &sealed, 65_536),
    )
    .await
    .unwrap();
    assert_eq!(opened, payload);

    let mut flipped = sealed.clone();
    flipped[2_000_000] ^= 1;
    let mut relabelled = sealed.clone();
    relabelled[7] = 2;
    for (what, bad, ad) in [
        ("flipped bit", flipped, b"file-1".as_slice()),
        ("truncated", sealed[..sealed.len() - 1].to_vec(), b"file-1"),
        ("extended", [sealed.as_slice(), b"x"].concat(), b"file-1"),
        ("other associated data", sealed.clone(), b"file-2"),
        ("relabelled version", relabelled, b"file-1"),
    ] {
        let status = run(
            &mut client,
            false,
            request(key_header("files", ad), &bad, 50_000),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(status.code(), Code::InvalidArgument)
                && status.message() == "decryption failed",
            "{what}: {status:?}"
        );
    }
    let status = run(
        &mut client,
        false,
        request(key_header("files", b""), b"NOPE1234", 8),
    )
    .await
    .unwrap_err();
    assert!(status.message().contains("OMS1"), "{status:?}");
    let status = run(
        &mut client,
        true,
        vec![StreamChunk {
            part: Some(Part::Data(b"no header".to_vec())),
        }],
    )
    .await
    .unwrap_err();
    assert!(status.message().contains("`header`"), "{status:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_stream_over_the_limit_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = core_engine::Config::for_test(dir.path());
    config.limits.max_stream_bytes = 100_000;
    let (server, _dir) = super::start_with(config, dir).await;
    let mut client = EngineClient::new(server.channel().await);
    client
        .create_key(CreateKeyRequest {
            name: "k".into(),
            ..CreateKeyRequest::default()
        })
        .await
        .unwrap();
    let status = run(
        &mut client,
        true,
        request(key_header("k", b""), &vec![0; 200_000], 50_000),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.max_stream_bytes"),
        "{status:?}"
    );
    server.stop().await.unwrap();
}
