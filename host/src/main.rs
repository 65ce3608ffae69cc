//! `projector`: the projection host's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use projector_host::{cli, settings::Settings};

#[derive(Parser)]
#[command(
    name = "projector",
    version,
    about = "WebAssembly-pluggable event projection host (Kafka -> MySQL)"
)]
struct Args {
    /// Settings file (TOML); environment variables override it.
    #[arg(long, short, global = true, env = "PROJECTOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the domain topics and keep the MySQL projection up to date.
    Run {
        /// Project with the flattening compiled into the host instead of the
        /// WASM components (for comparison; no sandbox).
        #[arg(long)]
        native: bool,
    },
    /// Create or upgrade the MySQL schema (idempotent).
    Migrate,
    /// Publish envelope files (JSON) to the topic of their event type, keyed by entity id.
    Publish {
        /// Topic name prefix, e.g. `test.` publishes user events to `test.user`.
        #[arg(long, default_value = "")]
        topic_prefix: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Row counts of the projection, applied events, and lag per partition.
    Status,
    /// Load component files in the sandbox, validate them and print what they declare.
    Check {
        /// `.wasm` component files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Project envelope files (JSON) through the components of a folder and print the row operations.
    Project {
        /// Folder of `<domain>.wasm` components (default: the configured one).
        #[arg(long)]
        components: Option<PathBuf>,
        /// Envelope files, one JSON envelope each.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command {
        Command::Run { native } => cli::run(settings, native),
        Command::Migrate => cli::migrate(&settings),
        Command::Publish {
            topic_prefix,
            files,
        } => cli::publish(&settings, &topic_prefix, &files),
        Command::Status => cli::status(&settings),
        Command::Check { files } => cli::check(&settings, &files),
        Command::Project { components, files } => {
            cli::project(&settings, components.as_deref(), &files)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
