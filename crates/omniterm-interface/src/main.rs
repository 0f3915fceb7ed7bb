//! omniterm-interface binary: `serve` (the default) runs the terminal service;
//! `interpret --jsonl` interprets one utterance per stdin line; `eval-nl` scores the
//! interpreter on a labelled set; `repl` is the interpreter at a prompt.
use std::io::{BufRead as _, Write as _};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use omnimesh_common::config::Sources;
use omniterm_interface::nl::{self, Interpreter, Limits};
use omniterm_interface::{App, Config};

#[derive(Debug, Parser)]
#[command(version, about = "OmniMesh operator terminal")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the terminal's gRPC API (the default).
    Serve,
    /// Interpret utterances without running anything.
    Interpret {
        /// Read one utterance per stdin line; write one JSON object per line.
        #[arg(long)]
        jsonl: bool,
        /// Add the canonical command, safety flags and the explanation to each object.
        #[arg(long)]
        explain: bool,
    },
    /// Type commands in plain English and see the plan each would run.
    Repl {
        /// Where history is kept (payloads are never stored).
        #[arg(long, default_value = ".omnimesh/omniterm-history")]
        history: std::path::PathBuf,
        /// Plain output even on a terminal (also when NO_COLOR is set).
        #[arg(long)]
        no_color: bool,
    },
    /// Score the interpreter on labelled JSON lines (plain and cross-validated).
    EvalNl {
        /// The labelled set; by default the shared development set.
        #[arg(default_value = "../shared/nl/utterances-dev.jsonl")]
        file: std::path::PathBuf,
        /// Folds for cross-validation.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Print every line that went wrong.
        #[arg(long)]
        errors: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command.unwrap_or(Command::Serve);
    if matches!(command, Command::Serve) {
        omnimesh_common::platform::tune_process();
    }
    run(command)
}

#[tokio::main]
async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve().await,
        Command::Interpret { jsonl, explain } => {
            anyhow::ensure!(
                jsonl,
                "only --jsonl is supported: one utterance per stdin line"
            );
            interpret(explain)
        }
        Command::Repl { history, no_color } => {
            let colour = !no_color && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            omniterm_interface::repl::run(&omniterm_interface::repl::Options {
                history,
                colour,
                limits: Limits::default(),
            })
        }
        Command::EvalNl {
            file,
            folds,
            errors,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let examples = nl::parse_examples(&text).map_err(anyhow::Error::msg)?;
            let plain = nl::eval::evaluate(&Interpreter::new(Limits::default()), &examples);
            let cross = nl::eval::cross_validate(&examples, &nl::own_examples(), folds);
            println!("== trained on everything (optimistic)\n{plain}\n");
            println!("== {folds}-fold cross-validated (the figure to quote)\n{cross}");
            if errors {
                println!("\n{}", cross.errors.join("\n"));
            }
            Ok(())
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let config: Config = omnimesh_common::config::load_or_exit(&Sources::from_process());
    let _telemetry = omnimesh_telemetry::init("omniterm-interface", &config.telemetry)?;
    let addr = config.listen.grpc;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let app = App::build(config).await?;
    app.serve(listener, omnimesh_common::shutdown_signal())
        .await?;
    Ok(())
}

fn interpret(explain: bool) -> anyhow::Result<()> {
    let interpreter = Interpreter::new(Limits::default());
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let line = line.context("reading stdin")?;
        let object = match interpreter.interpret(&line) {
            Ok(interpretation) => nl::to_json(&interpretation, explain),
            Err(error) => serde_json::json!({"text": line, "error": error.to_string()}),
        };
        writeln!(stdout, "{object}").context("writing stdout")?;
    }
    Ok(())
}
