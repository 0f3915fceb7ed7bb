//! core-engine integration tests: the real server in-process on 127.0.0.1:0, its key store
//! in a temporary directory (SQLite) or a fresh PostgreSQL database.

mod audit;
mod crypto;
mod kernels;
mod serving;
mod stream;

use core_engine::{App, Config};
use omnimesh_test_support::TestServer;

/// The engine on SQLite in a temporary directory (kept alive by the returned guard).
pub(crate) async fn start() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    start_with(Config::for_test(dir.path()), dir).await
}

pub(crate) async fn start_with(
    config: Config,
    dir: tempfile::TempDir,
) -> (TestServer, tempfile::TempDir) {
    let app = App::build(config).await.unwrap();
    let server = TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await;
    (server, dir)
}
