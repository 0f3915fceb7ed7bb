//! proxy-gateway binary: load config, start telemetry, serve both listeners until SIGTERM.
use anyhow::Context as _;
use omnimesh_common::config::Sources;
use proxy_gateway::{App, Config, Listeners};

fn main() -> anyhow::Result<()> {
    let config: Config = omnimesh_common::config::load_or_exit(&Sources::from_process());
    // One worker: a current-thread runtime (an event loop, as Envoy's worker is), which
    // saves the cross-thread wake-ups of a one-worker multi-thread runtime.
    let mut runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.worker_threads > 1 {
        runtime.worker_threads(config.worker_threads);
    }
    runtime
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let _telemetry = omnimesh_telemetry::init("proxy-gateway", &config.telemetry)?;
    let listeners = Listeners::bind(&config.listen)
        .await
        .context("binding the gateway listeners")?;
    let app = App::build(config).await?;
    app.serve(listeners, omnimesh_common::shutdown_signal())
        .await?;
    Ok(())
}
