//! The key and data RPCs through a real tonic client: Vault Transit semantics end to end,
//! and malformed, oversized and hostile input.

use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_proto::engine::v1::*;
use tonic::Code;
use tonic::transport::Channel;

use super::start;

async fn create(
    client: &mut EngineClient<Channel>,
    name: &str,
    key_type: KeyType,
    derived: bool,
) -> Key {
    client
        .create_key(CreateKeyRequest {
            name: name.into(),
            r#type: key_type as i32,
            derived,
            config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap()
}

/// Creates an AES-256-GCM key named `name` with `config`.
async fn create_configured(
    client: &mut EngineClient<Channel>,
    name: &str,
    config: KeyConfig,
) -> Result<Key, tonic::Status> {
    let created = client
        .create_key(CreateKeyRequest {
            name: name.into(),
            r#type: KeyType::Aes256Gcm as i32,
            derived: false,
            config: Some(config),
        })
        .await?;
    Ok(created.into_inner().key.unwrap_or_default())
}

/// A configuration that rotates every `seconds` (0: never).
fn rotating_every(seconds: u64) -> KeyConfig {
    KeyConfig {
        auto_rotate_period_seconds: seconds,
        ..KeyConfig::default()
    }
}

fn item(plaintext: &[u8], ad: &[u8], reference: &str) -> EncryptItem {
    EncryptItem {
        plaintext: plaintext.to_vec().into(),
        associated_data: ad.to_vec(),
        context: Vec::new(),
        reference: reference.into(),
    }
}

async fn encrypt(
    client: &mut EngineClient<Channel>,
    key: &str,
    items: Vec<EncryptItem>,
) -> Vec<EncryptResult> {
    client
        .encrypt(EncryptRequest {
            key_name: key.into(),
            key_version: 0,
            items,
        })
        .await
        .unwrap()
        .into_inner()
        .results
}

fn ciphertext(result: &EncryptResult) -> String {
    match &result.outcome {
        Some(encrypt_result::Outcome::Ciphertext(c)) => c.clone(),
        other => panic!("expected a ciphertext, got {other:?}"),
    }
}

async fn decrypt(
    client: &mut EngineClient<Channel>,
    key: &str,
    items: Vec<(String, Vec<u8>)>,
) -> Vec<Result<Vec<u8>, ItemError>> {
    client
        .decrypt(DecryptRequest {
            key_name: key.into(),
            items: items
                .into_iter()
                .enumerate()
                .map(|(i, (ciphertext, associated_data))| DecryptItem {
                    ciphertext,
                    associated_data,
                    context: Vec::new(),
                    reference: format!("r{i}"),
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .enumerate()
        .map(|(i, result)| {
            assert_eq!(
                result.reference,
                format!("r{i}"),
                "references are echoed in order"
            );
            match result.outcome.unwrap() {
                decrypt_result::Outcome::Plaintext(p) => Ok(p),
                decrypt_result::Outcome::Error(e) => Err(e),
            }
        })
        .collect()
}

#[tokio::test]
async fn encrypt_decrypt_rotate_rewrap_and_minimums() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    for key_type in [KeyType::Aes256Gcm, KeyType::Chacha20Poly1305] {
        let name = format!("k-{}", key_type as i32);
        let key = create(&mut client, &name, key_type, false).await;
        assert_eq!(key.latest_version, 1);
        let results = encrypt(
            &mut client,
            &name,
            vec![
                item(b"alpha", b"order-1", "a"),
                item(b"", b"", "empty"),
                item(&[7; 100_000], b"", "big"),
            ],
        )
        .await;
        assert_eq!(
            results
                .iter()
                .map(|r| r.reference.as_str())
                .collect::<Vec<_>>(),
            ["a", "empty", "big"]
        );
        let v1 = ciphertext(&results[0]);
        assert!(v1.starts_with("omnimesh:v1:"), "{v1}");
        let opened = decrypt(
            &mut client,
            &name,
            vec![
                (v1.clone(), b"order-1".to_vec()),
                (ciphertext(&results[1]), vec![]),
                (ciphertext(&results[2]), vec![]),
            ],
        )
        .await;
        assert_eq!(opened[0].as_deref().unwrap(), b"alpha");
        assert_eq!(opened[1].as_deref().unwrap(), b"");
        assert_eq!(opened[2].as_deref().unwrap(), [7; 100_000].as_slice());

        // Wrong associated data, a flipped bit, a relabelled version, another key's
        // ciphertext: one generic answer, per item, and the rest of the batch succeeds.
        let mut flipped = v1.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let relabelled = v1.replacen("omnimesh:v1:", "omnimesh:v2:", 1);
        client
            .rotate_key(RotateKeyRequest { name: name.clone() })
            .await
            .unwrap();
        let answers = decrypt(
            &mut client,
            &name,
            vec![
                (v1.clone(), b"order-2".to_vec()),
                (String::from_utf8(flipped).unwrap(), b"order-1".to_vec()),
                (relabelled, b"order-1".to_vec()),
                (v1.clone(), b"order-1".to_vec()),
            ],
        )
        .await;
        for answer in &answers[..3] {
            let error = answer.as_ref().unwrap_err();
            assert_eq!(error.code, Code::InvalidArgument as i32);
            assert_eq!(error.message, "decryption failed");
        }
        assert_eq!(answers[3].as_deref().unwrap(), b"alpha");

        // Version 2 is now used; rewrap moves v1 to v2 without the plaintext leaving.
        let v2 = ciphertext(&encrypt(&mut client, &name, vec![item(b"beta", b"", "")]).await[0]);
        assert!(v2.starts_with("omnimesh:v2:"));
        let rewrapped = client
            .rewrap(RewrapRequest {
                key_name: name.clone(),
                items: vec![RewrapItem {
                    ciphertext: v1.clone(),
                    associated_data: b"order-1".to_vec(),
                    context: vec![],
                    reference: "x".into(),
                }],
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        let rewrapped = ciphertext(&rewrapped[0]);
        assert!(rewrapped.starts_with("omnimesh:v2:"));

        // Raise the minimum: v1 ciphertexts are refused with FAILED_PRECONDITION.
        let key = client
            .update_key_config(UpdateKeyConfigRequest {
                name: name.clone(),
                config: Some(KeyConfigUpdate {
                    min_decryption_version: Some(2),
                    ..KeyConfigUpdate::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .key
            .unwrap();
        assert_eq!(key.versions[0].state, KeyVersionState::Retired as i32);
        let answers = decrypt(
            &mut client,
            &name,
            vec![
                (v1.clone(), b"order-1".to_vec()),
                (rewrapped, b"order-1".to_vec()),
            ],
        )
        .await;
        let error = answers[0].as_ref().unwrap_err();
        assert_eq!(error.code, Code::FailedPrecondition as i32);
        assert!(
            error
                .message
                .contains("below the minimum decryption version 2"),
            "{error:?}"
        );
        assert_eq!(answers[1].as_deref().unwrap(), b"alpha");
        // Trim: version 1 is destroyed for good.
        let key = client
            .trim_key(TrimKeyRequest {
                name: name.clone(),
                min_available_version: 2,
            })
            .await
            .unwrap()
            .into_inner()
            .key
            .unwrap();
        assert_eq!(key.min_available_version, 2);
        assert_eq!(key.versions.len(), 1);
        assert!(key.versions[0].seal_count >= 2, "{key:?}");
    }
    // Key operations are counted by operation and key type, never by key name.
    let metrics =
        omnimesh_test_support::http::assert_probes(server.addr(), "omnimesh_core_engine").await;
    for line in [
        "omnimesh_core_engine_key_operations_total{operation=\"encrypt\",key_type=\"aes256-gcm\"} 2",
        "omnimesh_core_engine_key_operation_items_total{operation=\"encrypt\",key_type=\"aes256-gcm\"} 4",
        "omnimesh_core_engine_key_operations_total{operation=\"rotate\",key_type=\"chacha20-poly1305\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(!metrics.contains("k-1"), "no key names in metrics");
    assert!(
        metrics.contains("omnimesh_core_engine_seal_budget_used_ratio "),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn derived_keys_need_a_context_and_separate_by_it() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    create(&mut client, "tenants", KeyType::Aes256Gcm, true).await;
    let with_context = |context: &[u8]| EncryptItem {
        plaintext: b"row".to_vec().into(),
        associated_data: vec![],
        context: context.to_vec(),
        reference: String::new(),
    };
    let results = encrypt(
        &mut client,
        "tenants",
        vec![with_context(b"tenant-a"), with_context(b"")],
    )
    .await;
    let sealed = ciphertext(&results[0]);
    match &results[1].outcome {
        Some(encrypt_result::Outcome::Error(error)) => {
            assert_eq!(error.code, Code::InvalidArgument as i32);
            assert!(error.message.contains("items[1].context"), "{error:?}");
        }
        other => panic!("{other:?}"),
    }
    let open = |context: &[u8]| DecryptItem {
        ciphertext: sealed.clone(),
        associated_data: vec![],
        context: context.to_vec(),
        reference: String::new(),
    };
    let results = client
        .decrypt(DecryptRequest {
            key_name: "tenants".into(),
            items: vec![open(b"tenant-a"), open(b"tenant-b")],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        results[0].outcome,
        Some(decrypt_result::Outcome::Plaintext(b"row".to_vec()))
    );
    assert!(
        matches!(&results[1].outcome, Some(decrypt_result::Outcome::Error(e)) if e.message == "decryption failed")
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn signatures_hmacs_hashes_and_random_bytes() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    for (key_type, encodings) in [
        (KeyType::Ed25519, vec![SignatureEncoding::Unspecified]),
        (
            KeyType::EcdsaP256,
            vec![SignatureEncoding::Der, SignatureEncoding::Fixed],
        ),
    ] {
        let name = format!("sign-{}", key_type as i32);
        let key = create(&mut client, &name, key_type, false).await;
        let public = key.versions[0].public_key.clone();
        assert!(!public.is_empty());
        for encoding in encodings {
            let signed = client
                .sign(SignRequest {
                    key_name: name.clone(),
                    key_version: 0,
                    encoding: encoding as i32,
                    items: vec![SignItem {
                        message: b"release 1.4.2".to_vec(),
                        reference: "m".into(),
                    }],
                })
                .await
                .unwrap()
                .into_inner()
                .results;
            let Some(sign_result::Outcome::Signature(signature)) = signed[0].outcome.clone() else {
                panic!("{signed:?}");
            };
            // The public key from GetKey verifies the signature outside the engine.
            let raw = base64_decode(signature.strip_prefix("omnimesh:v1:").unwrap());
            let alg: &dyn ring::signature::VerificationAlgorithm = match (key_type, encoding) {
                (KeyType::Ed25519, _) => &ring::signature::ED25519,
                (_, SignatureEncoding::Fixed) => &ring::signature::ECDSA_P256_SHA256_FIXED,
                _ => &ring::signature::ECDSA_P256_SHA256_ASN1,
            };
            ring::signature::UnparsedPublicKey::new(alg, &public)
                .verify(b"release 1.4.2", &raw)
                .unwrap();
            let verified = client
                .verify(VerifyRequest {
                    key_name: name.clone(),
                    encoding: encoding as i32,
                    items: vec![
                        VerifyItem {
                            message: b"release 1.4.2".to_vec(),
                            signature: signature.clone(),
                            reference: String::new(),
                        },
                        VerifyItem {
                            message: b"release 6.6.6".to_vec(),
                            signature: signature.clone(),
                            reference: String::new(),
                        },
                        VerifyItem {
                            message: b"x".to_vec(),
                            signature: "garbage".into(),
                            reference: String::new(),
                        },
                    ],
                })
                .await
                .unwrap()
                .into_inner()
                .results;
            assert_eq!(
                verified[0].outcome,
                Some(verify_result::Outcome::Valid(true))
            );
            assert_eq!(
                verified[1].outcome,
                Some(verify_result::Outcome::Valid(false))
            );
            assert!(
                matches!(&verified[2].outcome, Some(verify_result::Outcome::Error(e)) if e.message.contains("items[2].signature"))
            );
        }
    }

    create(&mut client, "mac", KeyType::HmacSha256, false).await;
    let tags = client
        .hmac(HmacRequest {
            key_name: "mac".into(),
            key_version: 0,
            items: vec![HmacItem {
                message: b"payload".to_vec(),
                reference: String::new(),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let Some(hmac_result::Outcome::Hmac(tag)) = tags[0].outcome.clone() else {
        panic!("{tags:?}");
    };
    let checked = client
        .verify_hmac(VerifyHmacRequest {
            key_name: "mac".into(),
            items: vec![
                VerifyHmacItem {
                    message: b"payload".to_vec(),
                    hmac: tag.clone(),
                    reference: String::new(),
                },
                VerifyHmacItem {
                    message: b"payload!".to_vec(),
                    hmac: tag,
                    reference: String::new(),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        checked[0].outcome,
        Some(verify_result::Outcome::Valid(true))
    );
    assert_eq!(
        checked[1].outcome,
        Some(verify_result::Outcome::Valid(false))
    );

    // Operations a key type cannot do fail the whole call.
    let status = client
        .encrypt(EncryptRequest {
            key_name: "mac".into(),
            key_version: 0,
            items: vec![item(b"x", b"", "")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    let digests = client
        .hash(HashRequest {
            algorithm: HashAlgorithm::Sha256 as i32,
            inputs: vec![b"abc".to_vec()],
        })
        .await
        .unwrap()
        .into_inner()
        .digests;
    assert_eq!(
        hex::encode(&digests[0]),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let random = client
        .random_bytes(RandomBytesRequest { length: 64 })
        .await
        .unwrap()
        .into_inner()
        .bytes;
    assert_eq!(random.len(), 64);
    assert_ne!(random, vec![0; 64]);
    server.stop().await.unwrap();
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn hostile_and_oversized_input_gets_clear_errors_and_changes_nothing() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    create(&mut client, "k", KeyType::Aes256Gcm, false).await;

    let status = client
        .get_key(GetKeyRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    for name in ["", "../etc/passwd", "a b", "ключ", &"x".repeat(500), "a\0b"] {
        let status = client
            .create_key(CreateKeyRequest {
                name: name.into(),
                ..CreateKeyRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}");
        assert!(status.message().contains("`name`"), "{status:?}");
    }
    let status = client
        .create_key(CreateKeyRequest {
            name: "z".into(),
            r#type: 99,
            ..CreateKeyRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("`type`"));
    let status = client
        .create_key(CreateKeyRequest {
            name: "k".into(),
            ..CreateKeyRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    // Over the batch limit: RESOURCE_EXHAUSTED naming it; nothing sealed.
    let status = client
        .encrypt(EncryptRequest {
            key_name: "k".into(),
            key_version: 0,
            items: vec![EncryptItem::default(); 10_001],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.max_batch_items"),
        "{status:?}"
    );
    let status = client
        .random_bytes(RandomBytesRequest { length: u32::MAX })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("limits.max_random_bytes"));
    let status = client
        .random_bytes(RandomBytesRequest { length: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // A message over max_message_bytes is refused before it is decoded.
    let status = client
        .encrypt(EncryptRequest {
            key_name: "k".into(),
            key_version: 0,
            items: vec![item(&vec![0; 17 << 20], b"", "")],
        })
        .await
        .unwrap_err();
    assert!(
        status.code() == Code::ResourceExhausted
            && status.message().contains("limits.max_message_bytes"),
        "{status:?}"
    );

    // Versions that do not exist, malformed ciphertexts.
    let status = client
        .encrypt(EncryptRequest {
            key_name: "k".into(),
            key_version: 9,
            items: vec![item(b"x", b"", "")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("`key_version`"));
    let answers = decrypt(
        &mut client,
        "k",
        vec![
            (
                "omnimesh:v9:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==".into(),
                vec![],
            ),
            ("omnimesh:v1:!!!".into(), vec![]),
            ("vault:v1:AAAA".into(), vec![]),
            ("omnimesh:v1:AAAA".into(), vec![]),
            (format!("omnimesh:v1:{}", "A".repeat(1 << 20)), vec![]),
        ],
    )
    .await;
    assert_eq!(
        answers[0].as_ref().unwrap_err().message,
        "decryption failed"
    );
    for (index, answer) in answers.iter().enumerate().skip(1).take(2) {
        let error = answer.as_ref().unwrap_err();
        assert_eq!(error.code, Code::InvalidArgument as i32);
        assert!(
            error
                .message
                .contains(&format!("items[{index}].ciphertext")),
            "{error:?}"
        );
    }
    assert_eq!(
        answers[3].as_ref().unwrap_err().message,
        "decryption failed"
    );
    assert_eq!(
        answers[4].as_ref().unwrap_err().message,
        "decryption failed"
    );

    let sealed = ciphertext(&encrypt(&mut client, "k", vec![item(b"12345", b"", "")]).await[0]);
    let described = client
        .describe_ciphertext(DescribeCiphertextRequest {
            ciphertext: sealed,
            key_name: "k".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.key_version, 1);
    assert_eq!(described.plaintext_length, 5);
    assert_eq!(described.key_type, KeyType::Aes256Gcm as i32);

    // Deletion is refused until allowed; the key is intact afterwards.
    let status = client
        .delete_key(DeleteKeyRequest { name: "k".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let key = client
        .get_key(GetKeyRequest { name: "k".into() })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(key.latest_version, 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn keys_are_listed_in_pages() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    for n in 0..5 {
        create(&mut client, &format!("key-{n}"), KeyType::HmacSha256, false).await;
    }
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_keys(ListKeysRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 2);
        names.extend(page.keys.into_iter().map(|key| key.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, ["key-0", "key-1", "key-2", "key-3", "key-4"]);
    let status = client
        .list_keys(ListKeysRequest {
            page_size: 2,
            page_token: "not a token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await.unwrap();
}

/// `auto_rotate_period_seconds` through the API: set at creation, shown, changed,
/// refused below an hour with the field named (nothing changed), turned off with 0.
#[tokio::test]
async fn automatic_rotation_is_configured_through_the_api() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    let day = 86_400;
    let key = create_configured(&mut client, "daily", rotating_every(day))
        .await
        .unwrap();
    assert_eq!(key.config.unwrap().auto_rotate_period_seconds, day);
    let update = |seconds: u64| UpdateKeyConfigRequest {
        name: "daily".into(),
        config: Some(KeyConfigUpdate {
            auto_rotate_period_seconds: Some(seconds),
            deletion_allowed: Some(true),
            ..KeyConfigUpdate::default()
        }),
    };
    for refused in [1, 3599, u64::MAX] {
        let status = client.update_key_config(update(refused)).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{refused}: {status:?}"
        );
        assert!(
            status.message().contains("config.auto_rotate_period"),
            "{status:?}"
        );
    }
    let config = |key: Key| key.config.unwrap();
    let kept = client
        .get_key(GetKeyRequest {
            name: "daily".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(config(kept.clone()).auto_rotate_period_seconds, day);
    assert!(
        !config(kept).deletion_allowed,
        "a refused update changes nothing"
    );
    let hourly = client.update_key_config(update(3600)).await.unwrap();
    let hourly = config(hourly.into_inner().key.unwrap());
    assert_eq!(hourly.auto_rotate_period_seconds, 3600);
    let off = client.update_key_config(update(0)).await.unwrap();
    assert_eq!(
        config(off.into_inner().key.unwrap()).auto_rotate_period_seconds,
        0
    );
    // Refused at creation too.
    let status = create_configured(&mut client, "too-often", rotating_every(60))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// The running service rotates a key whose latest version has reached its period: the
/// version is made older in the database, and the next check rotates it once.
#[tokio::test]
async fn the_service_rotates_a_due_key_by_itself() {
    use sqlx::Connection as _;

    let dir = tempfile::tempdir().unwrap();
    let mut config = core_engine::Config::for_test(dir.path());
    config.keys.auto_rotate_check_interval = std::time::Duration::from_millis(50);
    let url = config.keys.database_url.clone();
    let (server, _dir) = super::start_with(config, dir).await;
    let mut client = EngineClient::new(server.channel().await);
    for (name, period) in [("hourly", 3600), ("manual", 0)] {
        create_configured(&mut client, name, rotating_every(period))
            .await
            .unwrap();
    }
    // Both keys' first version made two hours ago.
    let mut database = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE engine_key_versions SET created_at_ms = created_at_ms - 7200000")
        .execute(&mut database)
        .await
        .unwrap();
    let latest = |name: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .get_key(GetKeyRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner()
                .key
                .unwrap()
                .latest_version
        }
    };
    omnimesh_test_support::eventually(
        std::time::Duration::from_secs(30),
        "the hourly key rotated",
        || async { (latest("hourly").await == 2).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(
        latest("manual").await,
        1,
        "a key without a period is left alone"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_master_key_rotation_keeps_every_ciphertext_readable() {
    let dir = tempfile::tempdir().unwrap();
    let config = core_engine::Config::for_test(dir.path());
    let (first, retired) = (
        config.keys.master_key_file.clone(),
        dir.path().join("retired"),
    );
    let (server, dir) = super::start_with(config.clone(), dir).await;
    let mut client = EngineClient::new(server.channel().await);
    create(&mut client, "payments", KeyType::Aes256Gcm, false).await;
    create(&mut client, "signing", KeyType::Ed25519, false).await;
    let sealed =
        ciphertext(&encrypt(&mut client, "payments", vec![item(b"kept", b"", "")]).await[0]);
    server.stop().await.unwrap();

    // The operator retires the master key and installs a new one.
    std::fs::rename(&first, &retired).unwrap();
    std::fs::write(&first, "ab".repeat(32)).unwrap();
    let Err(refused) = core_engine::App::build(config.clone()).await else {
        panic!("started with a master key that unwraps nothing stored");
    };
    let refused = refused.to_string();
    assert!(
        refused.contains("2 key version(s) (payments v1, signing v1) are wrapped by master key")
            && refused.contains("previous_master_keys_file"),
        "start-up names what the new master key cannot unwrap: {refused}"
    );

    let mut rotated = config.clone();
    rotated.keys.previous_master_keys_file = retired.clone();
    let (server, dir) = super::start_with(rotated, dir).await;
    let mut client = EngineClient::new(server.channel().await);
    let opened = decrypt(&mut client, "payments", vec![(sealed.clone(), Vec::new())]).await;
    assert_eq!(opened, [Ok(b"kept".to_vec())]);
    let metrics =
        omnimesh_test_support::http::assert_probes(server.addr(), "omnimesh_core_engine").await;
    assert!(
        metrics.contains("omnimesh_core_engine_master_key_rewraps_total 2"),
        "{metrics}"
    );
    server.stop().await.unwrap();

    // Rewrapped for good: the new master key alone reads everything now.
    std::fs::remove_file(&retired).unwrap();
    let (server, _dir) = super::start_with(config, dir).await;
    let mut client = EngineClient::new(server.channel().await);
    let opened = decrypt(&mut client, "payments", vec![(sealed, Vec::new())]).await;
    assert_eq!(opened, [Ok(b"kept".to_vec())]);
    server.stop().await.unwrap();
}
