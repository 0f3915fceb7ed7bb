//! core-engine binary: load config, start telemetry, serve until SIGTERM.
use anyhow::Context as _;
use core_engine::{App, Config};
use omnimesh_common::config::Sources;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    omnimesh_common::platform::tune_process();
    serve()
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let config: Config = omnimesh_common::config::load_or_exit(&Sources::from_process());
    let _telemetry = omnimesh_telemetry::init("core-engine", &config.telemetry)?;
    let addr = config.listen.grpc;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let app = App::build(config).await?;
    app.serve(listener, omnimesh_common::shutdown_signal())
        .await?;
    Ok(())
}
