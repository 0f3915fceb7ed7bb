//! proxy-gateway binary: load config, start telemetry, serve both listeners until SIGTERM,
//! reloading the configuration file when it changes.
use anyhow::Context as _;
use omnimesh_common::config::Sources;
use proxy_gateway::{App, Config, Listeners};

fn main() -> anyhow::Result<()> {
    omnimesh_common::platform::tune_process();
    let sources = Sources::from_process();
    let config: Config = omnimesh_common::config::load_or_exit(&sources);
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
        .block_on(run(config, sources))
}

async fn run(config: Config, sources: Sources) -> anyhow::Result<()> {
    let _telemetry = omnimesh_telemetry::init("proxy-gateway", &config.telemetry)?;
    let listeners = Listeners::bind(&config.listen)
        .await
        .context("binding the gateway listeners")?;
    // The file (and SIGHUP) reload what can change without a restart.
    let app = App::build(config).await?.reload_from(sources)?;
    app.serve(listeners, omnimesh_common::shutdown_signal())
        .await?;
    Ok(())
}
