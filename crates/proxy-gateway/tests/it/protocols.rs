//! Protocols beyond plain gRPC through the gateway, against real upstreams on
//! 127.0.0.1:0: WebSocket pass-through (echo, both frame kinds, close, an upstream that
//! declines, auth before the upgrade) and gRPC-Web from a raw HTTP/1.1 client (binary
//! and base64 text, errors in the trailer frame).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::Engine as _;
use bytes::{Buf as _, Bytes};
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use omnimesh_common::auth::Role;
use omnimesh_proto::engine::v1 as pb;
use omnimesh_proto::engine::v1::engine_server::{Engine, EngineServer};
use omnimesh_test_support::TestServer;
use prost::Message as _;
use proxy_gateway::route::Route;
use proxy_gateway::{App, Config, Listeners};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

async fn gateway(
    dir: &std::path::Path,
    clusters: &[(&str, SocketAddr)],
    routes: Vec<Route>,
) -> TestServer {
    let mut config = Config::for_test(dir);
    config.upstreams.clusters = clusters
        .iter()
        .map(|(name, address)| ((*name).to_owned(), vec![address.to_string()]))
        .collect::<BTreeMap<_, _>>();
    config.routes = Some(routes);
    let app = App::build(config).await.unwrap();
    let admin = omnimesh_test_support::bind().await;
    TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown)).await
}

/// A WebSocket echo server: every text or binary message comes back as it was sent.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    // A close is answered by tungstenite on the next read, which then ends.
                    if (message.is_text() || message.is_binary())
                        && socket.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn ws_route() -> Route {
    Route {
        grpc: Some(false),
        ..Route::prefix("/ws", "terminal")
    }
}

#[tokio::test]
async fn websocket_messages_pass_through_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = websocket_echo().await;
    let server = gateway(dir.path(), &[("terminal", upstream)], vec![ws_route()]).await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr()))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    for round in 0..50 {
        let text = format!("deploy the engine 1.{round} as a 10% canary");
        socket.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(socket.next().await.unwrap().unwrap(), Message::text(text));
    }
    // A binary message larger than one TCP segment arrives whole.
    let blob: Vec<u8> = (0..200_000_u32).map(|i| (i % 251) as u8).collect();
    socket.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::binary(blob));
    socket.close(None).await.unwrap();
    // The close handshake completes through the tunnel: the stream then ends.
    while let Some(message) = socket.next().await {
        match message {
            Ok(message) => assert!(message.is_close(), "{message:?}"),
            Err(error) => panic!("{error}"),
        }
    }
}

#[tokio::test]
async fn an_upstream_that_declines_the_upgrade_is_answered_as_it_answered() {
    let dir = tempfile::tempdir().unwrap();
    // A plain HTTP server: no WebSocket at all.
    let upstream =
        crate::support::http_upstream(|_request| async { crate::support::respond(404, "no") })
            .await;
    let server = gateway(dir.path(), &[("terminal", upstream)], vec![ws_route()]).await;
    let error = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr()))
        .await
        .unwrap_err();
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 404);
        }
        other => panic!("expected the upstream's 404, got {other}"),
    }
}

#[tokio::test]
async fn a_protected_websocket_route_needs_a_token_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = websocket_echo().await;
    let route = Route {
        auth: Some(Role::Operator),
        ..ws_route()
    };
    let server = gateway(dir.path(), &[("terminal", upstream)], vec![route]).await;
    let url = format!("ws://{}/ws", server.addr());
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let token = omnimesh_common::auth::Issuer::load(&omnimesh_common::auth::AuthConfig::for_test(
        dir.path(),
    ))
    .unwrap()
    .issue("ops", Role::Operator, std::time::Duration::from_secs(60));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket.send(Message::text("status")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("status")
    );
}

/// An Engine that echoes, and fails `Echo` with `INVALID_ARGUMENT` for `b"bad"`.
#[derive(Debug, Clone, Copy)]
struct Echo;

#[tonic::async_trait]
impl Engine for Echo {
    async fn echo(
        &self,
        request: tonic::Request<pb::EchoRequest>,
    ) -> Result<tonic::Response<pb::EchoResponse>, tonic::Status> {
        let payload = request.into_inner().payload;
        if payload == b"bad"[..] {
            return Err(tonic::Status::invalid_argument("payload: bad is refused"));
        }
        Ok(tonic::Response::new(pb::EchoResponse { payload }))
    }
}

async fn engine() -> TestServer {
    TestServer::start(|listener, shutdown| {
        tonic::transport::Server::builder()
            .add_service(EngineServer::new(Echo))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
    })
    .await
}

/// One gRPC-Web call from a plain HTTP/1.1 connection, accepting the encoding it sends:
/// the status and content type, and the body's frames as (flag, payload); a
/// trailers-only answer (status in the headers) becomes a trailer frame.
async fn grpc_web_call(
    gateway: SocketAddr,
    content_type: &str,
    body: Bytes,
) -> (u16, String, Vec<(u8, Bytes)>) {
    let stream = TcpStream::connect(gateway).await.unwrap();
    let mut sender = crate::support::http1(stream).await;
    let request = http::Request::post("/omnimesh.engine.v1.Engine/Echo")
        .header("host", "gateway")
        .header("content-type", content_type)
        .header("accept", content_type)
        .header("x-grpc-web", "1")
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut frames = Vec::new();
    let headers = response.headers();
    if let Some(status) = headers.get("grpc-status") {
        let mut trailer = format!("grpc-status:{}\r\n", status.to_str().unwrap());
        if let Some(message) = headers.get("grpc-message") {
            trailer.push_str(&format!("grpc-message:{}\r\n", message.to_str().unwrap()));
        }
        frames.push((0x80, Bytes::from(trailer)));
    }
    let mut body = response.into_body().collect().await.unwrap().to_bytes();
    if content_type.starts_with("application/grpc-web-text") {
        body = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .unwrap()
            .into();
    }
    while body.has_remaining() {
        let flag = body.get_u8();
        let length = body.get_u32() as usize;
        frames.push((flag, body.split_to(length)));
    }
    (status, content_type, frames)
}

fn framed(message: &impl prost::Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = vec![0_u8];
    frame.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame.into()
}

fn engine_route() -> Route {
    Route::prefix("/omnimesh.engine.v1.", "core-engine")
}

#[tokio::test]
async fn grpc_web_calls_reach_a_grpc_upstream_binary_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = engine().await;
    let server = gateway(
        dir.path(),
        &[("core-engine", upstream.addr())],
        vec![engine_route()],
    )
    .await;
    let request = framed(&pb::EchoRequest {
        payload: b"from a browser".to_vec().into(),
    });
    let (status, content_type, frames) =
        grpc_web_call(server.addr(), "application/grpc-web+proto", request.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/grpc-web+proto");
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].0, 0);
    let reply = pb::EchoResponse::decode(frames[0].1.clone()).unwrap();
    assert_eq!(reply.payload, &b"from a browser"[..]);
    assert_eq!(frames[1].0, 0x80, "the trailer frame");
    let trailers = String::from_utf8(frames[1].1.to_vec()).unwrap();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // The text variant, base64 both ways.
    let text = base64::engine::general_purpose::STANDARD.encode(&request);
    let (status, content_type, frames) =
        grpc_web_call(server.addr(), "application/grpc-web-text", text.into()).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/grpc-web-text"),
        "{content_type}"
    );
    let reply = pb::EchoResponse::decode(frames[0].1.clone()).unwrap();
    assert_eq!(reply.payload, &b"from a browser"[..]);
}

#[tokio::test]
async fn grpc_web_errors_arrive_as_trailers_and_unrouted_calls_are_unimplemented() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = engine().await;
    let server = gateway(
        dir.path(),
        &[("core-engine", upstream.addr())],
        vec![engine_route()],
    )
    .await;
    let (status, _, frames) = grpc_web_call(
        server.addr(),
        "application/grpc-web+proto",
        framed(&pb::EchoRequest {
            payload: b"bad".to_vec().into(),
        }),
    )
    .await;
    assert_eq!(status, 200);
    let trailers: String = frames
        .iter()
        .filter(|(flag, _)| flag & 0x80 != 0)
        .map(|(_, data)| String::from_utf8_lossy(data).into_owned())
        .collect();
    assert!(trailers.contains("grpc-status:3"), "{trailers:?}");
    assert!(
        trailers.contains("grpc-message:payload:%20bad%20is%20refused"),
        "{trailers:?}"
    );

    // A gateway with no engine route: UNIMPLEMENTED, in grpc-web form (headers).
    let dir = tempfile::tempdir().unwrap();
    let lonely = gateway(dir.path(), &[], vec![ws_route()]).await;
    let stream = TcpStream::connect(lonely.addr()).await.unwrap();
    let mut sender = crate::support::http1(stream).await;
    let response = sender
        .send_request(
            http::Request::post("/omnimesh.engine.v1.Engine/Echo")
                .header("host", "gateway")
                .header("content-type", "application/grpc-web+proto")
                .body(Full::new(framed(&pb::EchoRequest::default())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "12");
}

#[tokio::test]
async fn a_grpc_web_get_is_refused_with_405() {
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(dir.path(), &[], vec![engine_route()]).await;
    let stream = TcpStream::connect(server.addr()).await.unwrap();
    let mut sender = crate::support::http1(stream).await;
    let response = sender
        .send_request(
            http::Request::get("/omnimesh.engine.v1.Engine/Echo")
                .header("host", "gateway")
                .header("content-type", "application/grpc-web")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

/// An engine whose EncryptStream answers every chunk at once with the same chunk.
#[derive(Debug, Clone, Copy)]
struct Relay;

#[tonic::async_trait]
impl Engine for Relay {
    async fn encrypt_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::StreamChunk>>,
    ) -> Result<
        tonic::Response<
            std::pin::Pin<
                Box<dyn futures::Stream<Item = Result<pb::StreamChunk, tonic::Status>> + Send>,
            >,
        >,
        tonic::Status,
    > {
        let incoming = request.into_inner();
        Ok(tonic::Response::new(Box::pin(incoming)))
    }
}

#[tokio::test]
async fn a_bidirectional_stream_is_full_duplex_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = TestServer::start(|listener, shutdown| {
        tonic::transport::Server::builder()
            .add_service(EngineServer::new(Relay))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
    })
    .await;
    let server = gateway(
        dir.path(),
        &[("core-engine", upstream.addr())],
        vec![engine_route()],
    )
    .await;
    let mut client =
        omnimesh_proto::engine::v1::engine_client::EngineClient::new(server.channel().await);
    let (to_upstream, outgoing) = tokio::sync::mpsc::channel::<pb::StreamChunk>(1);
    let mut answers = client
        .encrypt_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    // Each chunk's answer arrives before the next chunk is sent: nothing is buffered
    // to the end of either direction.
    for round in 0..100_u32 {
        let data = round.to_be_bytes().repeat(256);
        to_upstream
            .send(pb::StreamChunk {
                part: Some(pb::stream_chunk::Part::Data(data.clone())),
            })
            .await
            .unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), answers.message())
            .await
            .expect("the answer to this chunk, before the next is sent")
            .unwrap()
            .unwrap();
        assert_eq!(answer.part, Some(pb::stream_chunk::Part::Data(data)));
    }
    drop(to_upstream);
    assert!(
        answers.message().await.unwrap().is_none(),
        "the stream ends cleanly"
    );
}

#[tokio::test]
async fn an_h2c_upgrade_request_is_served_over_http1() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream says whether an upgrade reached it: an h2c upgrade must not.
    let upstream = crate::support::http_upstream(|request: http::Request<_>| async move {
        let upgrade = request.headers().contains_key("upgrade");
        crate::support::respond(200, if upgrade { "upgrade leaked" } else { "plain" })
    })
    .await;
    let server = gateway(dir.path(), &[("terminal", upstream)], vec![ws_route()]).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0_u8; 4096];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("plain"), "{answer}");
}
