//! core-engine's side of `make bench-engine`: prints one JSON object with our numbers;
//! `bench/engine/compare.py` sets them against OpenSSL and numpy measured in the same
//! run. Each figure is the median of `REPEATS` timed runs after a warm-up.
//!
//! `cargo bench -p core-engine --bench engine [-- --quick]`

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::time::{Duration, Instant};

use core_engine::bench_support::{
    Sealer, matmul, mean_variance, quantiles, sort_f64_into, sorted_f64,
};
use core_engine::{App, Config};
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_proto::engine::v1::*;
use serde_json::json;

// The allocator the service binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPEATS: usize = 3;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Times `f` REPEATS times after one warm-up; the median in seconds.
fn time(f: impl FnMut()) -> f64 {
    time_n(REPEATS, f)
}

/// Timed runs of a few milliseconds are at the mercy of this shared machine's noise:
/// those take the median of more runs.
const SHORT_REPEATS: usize = 15;

/// Times `f` `repeats` times after one warm-up; the median in seconds.
fn time_n(repeats: usize, mut f: impl FnMut()) -> f64 {
    if std::env::var_os("ENGINE_BENCH_VERBOSE").is_some() {
        let runs: Vec<f64> = (0..repeats)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .collect();
        eprintln!(
            "runs (ms): {:.2?}",
            runs.iter().map(|s| s * 1e3).collect::<Vec<_>>()
        );
    }
    f();
    median(
        (0..repeats)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Standard normal values from a fixed-seed xorshift and Box–Muller.
fn normals(n: usize) -> Vec<f64> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next().max(1e-300), next());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        })
        .collect()
}

/// A copy of `values` in an anonymous mapping advised for transparent huge pages, the way
/// numpy allocates its arrays (so the kernels and the memory read bandwidth of the
/// baseline see the same memory); a plain mapping where the advice is not supported.
fn in_huge_pages(values: &[f64]) -> memmap2::MmapMut {
    let mut map = huge_pages(values.len());
    bytemuck::cast_slice_mut::<u8, f64>(&mut map).copy_from_slice(values);
    if std::env::var_os("ENGINE_BENCH_VERBOSE").is_some() {
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
        let huge = rollup
            .lines()
            .find(|line| line.starts_with("AnonHugePages"));
        eprintln!("{}", huge.unwrap_or("AnonHugePages: unknown"));
    }
    map
}

/// Room for `n` f64 in anonymous memory advised for transparent huge pages, not yet
/// touched (zero, as the kernel maps it).
fn huge_pages(n: usize) -> memmap2::MmapMut {
    let map = memmap2::MmapMut::map_anon(n * size_of::<f64>()).expect("mmap");
    let _ = map.advise(memmap2::Advice::HugePage);
    map
}

/// Operations per second of `op` over `window`.
fn rate_once(window: Duration, mut op: impl FnMut() -> u64) -> f64 {
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < window {
        done += op();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Operations per second of `op` over `window`, repeated; the median.
fn rate(window: Duration, mut op: impl FnMut() -> u64) -> f64 {
    median((0..REPEATS).map(|_| rate_once(window, &mut op)).collect())
}

/// The median of `REPEATS` rounds of `round` after one more as a warm-up.
async fn warm_median<Fut: std::future::Future<Output = f64>>(
    mut round: impl FnMut() -> Fut,
) -> f64 {
    let mut runs = Vec::new();
    for _ in 0..=REPEATS {
        runs.push(round().await);
    }
    runs.remove(0);
    median(runs)
}

/// One round of calls: calls per second with `in_flight` concurrent callers on one
/// channel for `window`.
async fn rpc_round<F, Fut>(window: Duration, in_flight: usize, call: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut done = 0;
                while start.elapsed() < window {
                    done += call().await;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("caller");
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// A kind of round to alternate with others: one timed run, its rate.
type Round = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = f64>>>>;

/// A round of RPCs: each of `in_flight` callers makes `call` with its own copy of
/// `state` (a client and a request) for `window`; the items done per second.
fn calls_round<S, F, Fut>(window: Duration, in_flight: usize, state: S, call: F) -> Round
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    Box::new(move || {
        let (state, call) = (state.clone(), call.clone());
        Box::pin(rpc_round(window, in_flight, move || call(state.clone())))
    })
}

/// The median rate of each kind of round over `REPEATS` rounds, the kinds taken in turn
/// (a, b, a, b, …) after a warm-up round of each, so that a slow spell of this shared
/// machine falls on a measurement and its baseline alike.
async fn alternating(mut kinds: Vec<Round>) -> Vec<f64> {
    let mut runs = vec![Vec::new(); kinds.len()];
    for repeat in 0..=REPEATS {
        for (kind, runs) in kinds.iter_mut().zip(&mut runs) {
            let rate = kind().await;
            if repeat > 0 {
                runs.push(rate);
            }
        }
    }
    runs.into_iter().map(median).collect()
}

/// Items per second of Encrypt's work and bytes with nothing between them and loopback
/// sockets: per connection, a thread reads 64 × 1 KiB of plaintext, seals it as Encrypt
/// does and writes the 64 envelopes back, for a client that keeps its share of
/// `in_flight` such requests outstanding (one thread writing, one reading). One
/// connection per core (at most one per request in flight), so that sealing uses every
/// core, as the server's tasks do. No HTTP/2, protobuf or async runtime: the ceiling of
/// any Encrypt RPC of these batches on this machine, client on the same cores.
fn bare_socket_encrypt(window: Duration, in_flight: usize, cores: usize) -> f64 {
    let connections = cores.clamp(1, in_flight.max(1));
    let start = Instant::now();
    let calls: Vec<_> = (0..connections)
        .map(|connection| {
            // The requests in flight shared out, the first connections taking the rest.
            let share = in_flight / connections + usize::from(connection < in_flight % connections);
            std::thread::spawn(move || bare_socket_connection(start, window, share.max(1)))
        })
        .collect();
    let done: u64 = calls
        .into_iter()
        .map(|c| c.join().expect("connection"))
        .sum();
    (done * BARE_ITEMS as u64) as f64 / start.elapsed().as_secs_f64()
}

const BARE_ITEMS: usize = 64;

/// One connection of [`bare_socket_encrypt`]: the calls answered until `window` is over.
fn bare_socket_connection(start: Instant, window: Duration, in_flight: usize) -> u64 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    const ITEM: usize = 1024;
    let sealer = Sealer::new();
    let answer_len: usize = sealer
        .seal_batch(&vec![[0_u8; ITEM]; BARE_ITEMS])
        .iter()
        .map(String::len)
        .sum();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        socket.set_nodelay(true).expect("nodelay");
        let mut request = vec![0_u8; BARE_ITEMS * ITEM];
        let mut answer = Vec::with_capacity(answer_len);
        while socket.read_exact(&mut request).is_ok() {
            let items: Vec<&[u8]> = request.chunks(ITEM).collect();
            answer.clear();
            for envelope in sealer.seal_batch(&items) {
                answer.extend_from_slice(envelope.as_bytes());
            }
            if socket.write_all(&answer).is_err() {
                break;
            }
        }
    });
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    let mut sending = socket.try_clone().expect("clone");
    // One token per request that may be outstanding; each answer read returns one.
    let (tokens, token) = std::sync::mpsc::sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        tokens.send(()).expect("token");
    }
    let writer = std::thread::spawn(move || {
        let request = vec![0x5a_u8; BARE_ITEMS * ITEM];
        while token.recv().is_ok() {
            if sending.write_all(&request).is_err() {
                break;
            }
        }
    });
    let mut answer = vec![0_u8; answer_len];
    let mut done = 0;
    while start.elapsed() < window {
        socket.read_exact(&mut answer).expect("answer");
        assert!(answer.starts_with(b"omnimesh:v1:"), "an envelope came back");
        done += 1;
        tokens.send(()).expect("token");
    }
    // Shutting the socket down wakes a blocked write; closing it with answers unread
    // resets the connection, which ends the server's loop.
    let _ = socket.shutdown(Shutdown::Both);
    drop(tokens);
    writer.join().expect("writer");
    drop(socket);
    server.join().expect("server");
    done
}

fn main() {
    // As the service binary starts (glibc's copy routine on AMD CPUs).
    omnimesh_common::platform::tune_process();
    let quick = std::env::args().any(|arg| arg == "--quick");
    let n = std::env::var("ENGINE_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 1_000_000 } else { 10_000_000 });
    let window = Duration::from_millis(if quick { 300 } else { 2000 });
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    // ENGINE_BENCH_ONLY=seal,analyze,mv,sort,matmul,rpc runs only those parts (for profiling;
    // compare.py needs them all).
    let only = std::env::var("ENGINE_BENCH_ONLY").ok();
    let wanted = |part: &str| {
        only.as_deref()
            .is_none_or(|only| only.split(',').any(|p| p.trim() == part))
    };
    let mut out = serde_json::Map::new();
    out.insert("n".into(), json!(n));
    out.insert("threads".into(), json!(threads));

    if wanted("seal") {
        // AES-256-GCM sealing on one core, the Encrypt path (random nonce, bound prefix).
        let sealer = Sealer::new();
        let buffer = vec![0x5a_u8; 16 * 1024];
        let seal_16k = rate(window, || {
            black_box(sealer.seal(black_box(&buffer)));
            buffer.len() as u64
        });
        let mut bulk = vec![0x5a_u8; 16 * 1024];
        let mut counter = 0;
        let seal_16k_in_place = rate(window, || {
            counter += 1;
            black_box(sealer.seal_in_place(counter, black_box(&mut bulk)));
            bulk.len() as u64
        });
        // In-process sealing of 1 KiB items the way Encrypt seals a 64-item batch
        // (nonces from one generator call, envelopes included).
        let batch = vec![vec![0x5a_u8; 1024]; 64];
        let seal_1k_items = rate(window, || {
            black_box(sealer.seal_batch(black_box(&batch)));
            batch.len() as u64
        });

        // Chunked encryption in process, as the stream RPCs do it: 64 MiB in 64 KiB
        // pieces, sealed and then opened piece for piece.
        let pieces = vec![vec![0x5a_u8; 64 * 1024]; 1024];
        let message_len = (pieces.len() * 64 * 1024) as f64;
        let stream_seal = message_len
            / time_n(SHORT_REPEATS, || {
                sealer.encrypt_stream(black_box(&pieces), |piece| {
                    black_box(piece);
                });
            });
        let mut sealed = Vec::new();
        sealer.encrypt_stream(&pieces, |piece| sealed.push(piece));
        let stream_open = message_len
            / time_n(SHORT_REPEATS, || {
                black_box(sealer.decrypt_stream(black_box(&sealed)));
            });
        out.insert(
            "stream_seal_64MiB_1core_bytes_per_s".into(),
            json!(stream_seal),
        );
        out.insert(
            "stream_open_64MiB_1core_bytes_per_s".into(),
            json!(stream_open),
        );
        out.insert(
            "seal_aes256gcm_16KiB_1core_bytes_per_s".into(),
            json!(seal_16k),
        );
        out.insert(
            "seal_in_place_aes256gcm_16KiB_1core_bytes_per_s".into(),
            json!(seal_16k_in_place),
        );
        out.insert(
            "seal_aes256gcm_1KiB_1core_items_per_s".into(),
            json!(seal_1k_items),
        );
    }

    // "mv" runs only mean + variance: `make bench-engine` pairs it with numpy's memory
    // read, seconds apart.
    let mean_var_wanted = wanted("analyze") || wanted("mv");
    let values = if mean_var_wanted || wanted("sort") {
        normals(n)
    } else {
        Vec::new()
    };
    if mean_var_wanted {
        let bytes = (n * 8) as f64;
        // The same values in ordinary (4 KiB) pages, for the record.
        let mean_var_small_pages = time_n(SHORT_REPEATS, || {
            black_box(mean_variance(black_box(&values)));
        });
        let huge = in_huge_pages(&values);
        let huge: &[f64] = bytemuck::cast_slice(&huge);
        let mean_var = time_n(SHORT_REPEATS, || {
            black_box(mean_variance(black_box(huge)));
        });
        out.insert("mean_variance_s".into(), json!(mean_var));
        out.insert(
            "mean_variance_small_pages_GB_per_s".into(),
            json!(bytes / mean_var_small_pages / 1e9),
        );
        out.insert(
            "mean_variance_GB_per_s".into(),
            json!(bytes / mean_var / 1e9),
        );
    }
    if wanted("analyze") {
        let qs = [0.01, 0.25, 0.5, 0.75, 0.99];
        let quantiles_5 = time(|| {
            black_box(quantiles(black_box(&values), &qs));
        });
        out.insert("quantiles_5_s".into(), json!(quantiles_5));
    }
    if wanted("sort") {
        // Like `numpy.sort`: a sorted copy in a new array (in huge pages, as numpy
        // allocates); numpy copies, then sorts the copy, while ours sorts into it.
        let sort = time(|| {
            let mut copy = huge_pages(values.len());
            sort_f64_into(&values, bytemuck::cast_slice_mut(&mut copy));
            black_box(copy);
        });
        out.insert("sort_f64_s".into(), json!(sort));
        // Context: the Compute RPC's sort, a sorted copy into a new vector (zeroed by the
        // allocator, in ordinary pages).
        let compute_sort = time(|| {
            black_box(sorted_f64(&values));
        });
        out.insert("sort_f64_compute_s".into(), json!(compute_sort));
    }

    if wanted("matmul") {
        let side = if quick { 512 } else { 2048 };
        let a = normals(side * side);
        let b = normals(side * side);
        let gemm = time(|| {
            black_box(matmul(&a, &b, side, threads));
        });
        let gflops = 2.0 * (side as f64).powi(3) / gemm / 1e9;

        out.insert("matmul_side".into(), json!(side));
        out.insert("matmul_s".into(), json!(gemm));
        out.insert("matmul_GFLOP_per_s".into(), json!(gflops));
    }

    // "rpc1" runs only the 1 KiB Echo and Encrypt, "rpc64" only the batched Encrypt and Decrypt,
    // "stream" only the stream calls (for profiling).
    let all_rpc = wanted("rpc");
    let single = all_rpc || wanted("rpc1");
    let (batched, streamed) = (all_rpc || wanted("rpc64"), all_rpc || wanted("stream"));
    if single || batched || streamed {
        // The RPCs: a real server on 127.0.0.1:0 and a warm client, both in this process.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let rates = runtime.block_on(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let app = App::build(Config::for_test(dir.path()))
                .await
                .expect("engine");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(app.serve(listener, async {
                let _ = stopped.await;
            }));
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .max_frame_size(omnimesh_common::server::MAX_FRAME_SIZE_DEFAULT)
                .connect()
                .await
                .expect("connect");
            let mut client = EngineClient::new(channel);
            client
                .create_key(CreateKeyRequest {
                    name: "bench".into(),
                    ..CreateKeyRequest::default()
                })
                .await
                .expect("key");
            let payload = vec![0x5a_u8; 1024];
            // Echo calls per second: `size` bytes each way, `in_flight` at once.
            let echo_round = |size: usize, in_flight: usize| -> Round {
                let request = EchoRequest {
                    payload: vec![0x5a_u8; size].into(),
                };
                calls_round(
                    window,
                    in_flight,
                    (client.clone(), request),
                    |(mut client, request)| async move {
                        client.echo(request).await.expect("echo");
                        1
                    },
                )
            };
            // Items encrypted per second: calls of `batch` 1 KiB items, `in_flight` at once.
            let encrypt_round = |batch: usize, in_flight: usize| -> Round {
                let items = vec![
                    EncryptItem {
                        plaintext: payload.clone().into(),
                        ..EncryptItem::default()
                    };
                    batch
                ];
                calls_round(
                    window,
                    in_flight,
                    (client.clone(), items),
                    move |(mut client, items)| async move {
                        client
                            .encrypt(EncryptRequest {
                                key_name: "bench".into(),
                                key_version: 0,
                                items,
                            })
                            .await
                            .expect("encrypt");
                        batch as u64
                    },
                )
            };
            // Each measurement in turn with its baseline.
            let (echo, encrypt_1) = if single {
                let rates = alternating(vec![echo_round(1024, 64), encrypt_round(1, 64)]).await;
                (rates[0], rates[1])
            } else {
                (f64::NAN, f64::NAN)
            };
            // The batched Encrypt, in turn with in-process sealing of the same items
            // (one core, as the `seal` part measures it), with the same work and bytes
            // over a bare socket (the ceiling, for context) and with an Echo of the
            // request's size (the transport alone, for context).
            let (encrypt_64, sealed_alongside, bare_socket, echo_64k) = if batched {
                let mut kinds = vec![encrypt_round(64, 8)];
                kinds.push(Box::new(move || {
                    let sealer = Sealer::new();
                    let batch = vec![vec![0x5a_u8; 1024]; 64];
                    let rate = rate_once(window, || {
                        black_box(sealer.seal_batch(black_box(&batch)));
                        batch.len() as u64
                    });
                    Box::pin(std::future::ready(rate))
                }));
                kinds.push(Box::new(move || {
                    Box::pin(std::future::ready(bare_socket_encrypt(window, 8, threads)))
                }));
                if all_rpc {
                    kinds.push(echo_round(64 * 1024, 8));
                }
                let rates = alternating(kinds).await;
                (
                    rates[0],
                    rates[1],
                    rates[2],
                    rates.get(3).copied().unwrap_or(f64::NAN),
                )
            } else {
                (f64::NAN, f64::NAN, f64::NAN, f64::NAN)
            };
            // The batched Decrypt of 64 ciphertexts of this server's key (one Encrypt
            // answer), in turn with in-process opening of 64 ciphertexts as Decrypt
            // opens them (one core).
            let (decrypt_64, opened_alongside) = if batched {
                let sealed = client
                    .clone()
                    .encrypt(EncryptRequest {
                        key_name: "bench".into(),
                        key_version: 0,
                        items: vec![
                            EncryptItem {
                                plaintext: payload.clone().into(),
                                ..EncryptItem::default()
                            };
                            64
                        ],
                    })
                    .await
                    .expect("encrypt")
                    .into_inner();
                let items: Vec<DecryptItem> = sealed
                    .results
                    .into_iter()
                    .map(|result| match result.outcome {
                        Some(encrypt_result::Outcome::Ciphertext(ciphertext)) => DecryptItem {
                            ciphertext,
                            ..DecryptItem::default()
                        },
                        other => panic!("an item was not encrypted: {other:?}"),
                    })
                    .collect();
                let decrypt_round = calls_round(
                    window,
                    8,
                    (client.clone(), items),
                    |(mut client, items)| async move {
                        let answer = client
                            .decrypt(DecryptRequest {
                                key_name: "bench".into(),
                                items,
                            })
                            .await
                            .expect("decrypt")
                            .into_inner();
                        assert!(answer.results.iter().all(|result| matches!(
                            &result.outcome,
                            Some(decrypt_result::Outcome::Plaintext(plaintext))
                                if plaintext.len() == 1024
                        )));
                        answer.results.len() as u64
                    },
                );
                let opening: Round = Box::new(move || {
                    let sealer = Sealer::new();
                    let ciphertexts = sealer.seal_batch(&vec![vec![0x5a_u8; 1024]; 64]);
                    let rate = rate_once(window, || {
                        assert_eq!(sealer.open_batch(black_box(&ciphertexts)), 64 * 1024);
                        ciphertexts.len() as u64
                    });
                    Box::pin(std::future::ready(rate))
                });
                let rates = alternating(vec![decrypt_round, opening]).await;
                (rates[0], rates[1])
            } else {
                (f64::NAN, f64::NAN)
            };
            // Plaintext bytes per second through one EncryptStream call (64 MiB in 64 KiB
            // pieces, the response read to its end), then through one DecryptStream call
            // of what it returned, piece for piece.
            let (stream, decrypt_stream) = if streamed {
                const PIECE: usize = 64 * 1024;
                const PIECES: usize = 1024;
                let header = || StreamChunk {
                    part: Some(stream_chunk::Part::Header(StreamHeader {
                        key_name: "bench".into(),
                        ..StreamHeader::default()
                    })),
                };
                // Runs one call over `header` and `pieces`; the data pieces of its answer.
                let call = |decrypt: bool, pieces: Vec<Vec<u8>>| {
                    let mut client = client.clone();
                    async move {
                        let input = tokio_stream::iter(std::iter::once(header()).chain(
                            pieces.into_iter().map(|piece| StreamChunk {
                                part: Some(stream_chunk::Part::Data(piece)),
                            }),
                        ));
                        let mut output = if decrypt {
                            client.decrypt_stream(input).await
                        } else {
                            client.encrypt_stream(input).await
                        }
                        .expect("stream call")
                        .into_inner();
                        let mut out = Vec::new();
                        while let Some(message) = output.message().await.expect("stream message") {
                            if let Some(stream_chunk::Part::Data(data)) = message.part {
                                out.push(data);
                            }
                        }
                        out
                    }
                };
                // Plaintext bytes per second of one call over `input`, whose answer
                // must carry a number of bytes in `expected`.
                let timed =
                    |decrypt: bool,
                     input: &Vec<Vec<u8>>,
                     expected: std::ops::RangeInclusive<usize>| {
                        let input = input.clone();
                        async move {
                            let start = Instant::now();
                            let out: usize = call(decrypt, input).await.iter().map(Vec::len).sum();
                            let elapsed = start.elapsed().as_secs_f64();
                            assert!(expected.contains(&out), "the whole stream came back: {out}");
                            (PIECES * PIECE) as f64 / elapsed
                        }
                    };
                let plaintext = vec![vec![0x5a_u8; PIECE]; PIECES];
                // Sealed, the answer is longer than the plaintext; opened, as long.
                let encrypt =
                    warm_median(|| timed(false, &plaintext, PIECES * PIECE + 1..=usize::MAX)).await;
                let ciphertext = call(false, plaintext).await;
                let decrypt =
                    warm_median(|| timed(true, &ciphertext, PIECES * PIECE..=PIECES * PIECE)).await;
                (encrypt, decrypt)
            } else {
                (f64::NAN, f64::NAN)
            };
            let _ = stop.send(());
            server.await.expect("server task").expect("server");
            // Each figure under its key, for the parts that ran.
            let mut rates = serde_json::Map::new();
            if single {
                rates.insert("rpc_echo_1KiB_64_in_flight_per_s".into(), json!(echo));
                rates.insert(
                    "rpc_encrypt_1KiB_64_in_flight_per_s".into(),
                    json!(encrypt_1),
                );
            }
            if all_rpc {
                rates.insert("rpc_echo_64KiB_8_in_flight_per_s".into(), json!(echo_64k));
            }
            if batched {
                rates.insert(
                    "rpc_encrypt_64x1KiB_8_in_flight_items_per_s".into(),
                    json!(encrypt_64),
                );
                rates.insert(
                    "seal_aes256gcm_1KiB_1core_items_per_s_alongside_rpc".into(),
                    json!(sealed_alongside),
                );
                rates.insert(
                    "bare_socket_encrypt_64x1KiB_8_in_flight_items_per_s".into(),
                    json!(bare_socket),
                );
                rates.insert(
                    "rpc_decrypt_64x1KiB_8_in_flight_items_per_s".into(),
                    json!(decrypt_64),
                );
                rates.insert(
                    "open_aes256gcm_1KiB_1core_items_per_s_alongside_rpc".into(),
                    json!(opened_alongside),
                );
            }
            if streamed {
                rates.insert("rpc_encrypt_stream_64MiB_bytes_per_s".into(), json!(stream));
                rates.insert(
                    "rpc_decrypt_stream_64MiB_bytes_per_s".into(),
                    json!(decrypt_stream),
                );
            }
            rates
        });
        out.extend(rates);
    }

    println!("{}", serde_json::Value::Object(out));
}
