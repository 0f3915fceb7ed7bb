//! mesh-controller binary: `serve` the control plane (the default), or `launch` the
//! whole platform on this machine.
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mesh_controller::{App, Config};
use omnimesh_common::config::Sources;

#[derive(Debug, Parser)]
#[command(version, about = "OmniMesh control plane")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the mesh-controller gRPC API (the default).
    Serve,
    /// Start, supervise and stop the four services on 127.0.0.1 (`make run`).
    Launch,
    /// Print a token signed with the local HS256 key (`[mesh-controller.auth]`).
    Token {
        /// Who the token names (its `sub`).
        #[arg(long, default_value = "operator")]
        subject: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "operator", value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// How long it is valid, e.g. 1h, 30m.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Some(Command::Token { .. })) {
        // Launched services inherit the tuning and are not re-executed themselves.
        omnimesh_common::platform::tune_process();
    }
    run(cli)
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let sources = Sources::from_process();
    let config: Config = omnimesh_common::config::load_or_exit(&sources);
    if let Some(Command::Token { subject, role, ttl }) = &cli.command {
        let issuer = omnimesh_common::auth::Issuer::load(&config.auth)?;
        let role =
            omnimesh_common::auth::Role::parse(role).unwrap_or(omnimesh_common::auth::Role::Viewer);
        println!("{}", issuer.issue(subject, role, *ttl));
        return Ok(());
    }
    let _telemetry = omnimesh_telemetry::init("mesh-controller", &config.telemetry)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let addr = config.listen.grpc;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let app = App::build(config).await?;
            app.serve(listener, omnimesh_common::shutdown_signal())
                .await?;
        }
        Command::Token { .. } => {}
        Command::Launch => {
            mesh_controller::launch(
                &config,
                &sources,
                &mut std::io::stdout(),
                omnimesh_common::shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}
