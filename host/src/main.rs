//! `projector`: the projection host's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use projector_host::{cli, settings::Settings};

/// What `projector` exits with.
const EXIT_CODES: &str = "Exit status:
  0  success
  1  the command ran and failed: a component refused, a letter not found,
     a redrive that failed, a host or service that did not answer
  2  usage or settings error (nothing was done)";

#[derive(Parser)]
#[command(
    name = "projector",
    version,
    about = "WebAssembly-pluggable event projection host (Kafka -> MySQL)",
    after_help = EXIT_CODES
)]
struct Args {
    /// Settings file (TOML); environment variables override it.
    #[arg(long, short, global = true, env = "PROJECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines on stderr: `text` for people, `json` (one object per
    /// line) for log shippers. The level comes from RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        env = "PROJECTOR_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Create or upgrade the MySQL schema (idempotent): the host's
    /// bookkeeping tables, then the tables the configured components
    /// declare (additive changes only, as a starting host would).
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
    Status {
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild one domain's tables from the start of its topic through the
    /// current component, while the running host keeps the other domains going.
    Replay {
        /// The domain (user, supplier, product, order, post).
        #[arg(long)]
        domain: String,
        /// Reset and return without waiting for the host to finish.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting when the host makes no progress for this long (seconds).
        #[arg(long, default_value_t = 60)]
        stall_timeout: u64,
        /// Replay even though retention deleted the start of the topic
        /// (the rows of the deleted events are lost).
        #[arg(long)]
        force: bool,
    },
    /// Rebuild one domain into shadow tables beside live traffic (from the
    /// start of its topic), then swap them in with one atomic RENAME TABLE:
    /// readers see the old complete tables or the new ones, never a mix.
    /// The previous tables are kept for `--rollback` until `--drop-previous`.
    Rebuild {
        /// The domain (user, supplier, product, order, post).
        #[arg(long)]
        domain: String,
        /// Rebuild with this component (a new rule applied to all history);
        /// it is deployed to the live host at the swap.
        #[arg(long, conflicts_with_all = ["rollback", "drop_previous"])]
        component: Option<PathBuf>,
        /// The live host's admin address for deploying (default:
        /// http://<admin.listen>); the token is `admin.token[_file]`.
        #[arg(long)]
        url: Option<String>,
        /// Swap the previous tables back (and the previous component, if the
        /// rebuild deployed one); the live host re-projects what came since.
        #[arg(long, conflicts_with = "drop_previous")]
        rollback: bool,
        /// Drop the previous tables (no rollback after this).
        #[arg(long)]
        drop_previous: bool,
        /// Rebuild even though retention deleted the start of the topic.
        #[arg(long)]
        force: bool,
        /// Give up when the shadow makes no progress for this long (seconds).
        #[arg(long, default_value_t = 60)]
        stall_timeout: u64,
        /// The report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run a candidate component beside the live one on the same live
    /// events (writing nothing), compare their row operations event by
    /// event, and report agreement, differences (with examples) and errors.
    /// Exit 1 when it differs or fails (or is not promoted when asked).
    Canary {
        /// The candidate `.wasm` component (its domain's live component is
        /// the one in the components folder).
        file: PathBuf,
        /// Deploy the candidate to the live host after this many agreeing
        /// events with no difference and no error; any difference or error
        /// ends the canary without promoting.
        #[arg(long, value_name = "N")]
        promote_after: Option<u64>,
        /// A column whose differences are expected (the point of the
        /// change): `table.column` or `column`. Repeatable.
        #[arg(long = "expect", value_name = "COLUMN")]
        expect: Vec<String>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        events: Option<u64>,
        /// Stop after this many seconds without an event.
        #[arg(long, value_name = "SECONDS")]
        idle_timeout: Option<u64>,
        /// Compare from the start of the topic instead of the live positions.
        #[arg(long)]
        from_start: bool,
        /// The live host's admin address for promoting (default:
        /// http://<admin.listen>); the token is `admin.token[_file]`.
        #[arg(long)]
        url: Option<String>,
        /// Examples of differences and errors to keep.
        #[arg(long, default_value_t = 10)]
        examples: usize,
        /// The report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove bookkeeping that can no longer matter: processed events of
    /// messages retention deleted, and old tombstones.
    Prune {
        /// Keep tombstones this many days: an event older than its entity's
        /// delete by more than this, arriving later, is applied again
        /// (default: the `prune.tombstone_days` setting, 30).
        #[arg(long)]
        tombstone_days: Option<u32>,
    },
    /// Inspect and redrive the dead-letter topics.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Load component files in the sandbox, validate them and print what they declare.
    Check {
        /// Also check each declaration against this database's live schema
        /// (tables, columns, keys), as a host connected to it would.
        #[arg(long, value_name = "MYSQL_URL")]
        against: Option<String>,
        /// `.wasm` component files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON array, an object per file (`ok`, and the declaration or
        /// the `reason`).
        #[arg(long)]
        json: bool,
    },
    /// Scaffold a projection component crate: one table, three event types,
    /// fixtures with their golden operations, a native test.
    New {
        /// The domain (lower-case; its topic, event type prefix and table `<domain>s`).
        domain: String,
        /// Where to create the crate (default: ./<domain>-projection).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The projection-sdk crate (default: ./guest-projections/sdk).
        #[arg(long, default_value = "guest-projections/sdk")]
        sdk: PathBuf,
    },
    /// Run a component crate's fixtures through its native build (cargo
    /// test) and its WASM build in the sandbox, against their golden files.
    Test {
        /// The component crate's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Send a component to a running host, which validates it (sandbox,
    /// contract, grants, live schema), writes it into its components folder
    /// and swaps it in; or says why not (the old one keeps serving).
    Deploy {
        /// The `.wasm` component.
        file: PathBuf,
        /// The host's admin address (default: http://<admin.listen>); the
        /// token is `admin.token` or `admin.token_file`.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print the schema reference generated from the components' typed
    /// table declarations, or rewrite it in a file between its markers.
    SchemaDoc {
        /// Rewrite the generated section of this file (e.g. docs/schema.md).
        #[arg(long)]
        write: Option<PathBuf>,
        /// `.wasm` component files (default: every one in the configured folder).
        files: Vec<PathBuf>,
    },
    /// Print a shell completion script (e.g. `projector completions bash >
    /// /etc/bash_completion.d/projector`).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (projector.1 and one per subcommand) into a folder.
    Man {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
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

#[derive(Subcommand)]
enum DlqCommand {
    /// One line per dead letter: id, source, error class and message.
    List {
        /// Only letters of this error class (e.g. invalid_event, guest_trap).
        #[arg(long)]
        class: Option<String>,
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead letter, its original included.
    Show {
        /// `<dlq topic>:<partition>:<offset>`, as `dlq list` prints it.
        id: String,
        /// Compact JSON on one line (the default is indented).
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their source topic, through the components in force now.
    Redrive {
        /// Every dead letter not redriven yet.
        #[arg(long, conflicts_with_all = ["class", "ids"])]
        all: bool,
        /// Every dead letter of this error class not redriven yet.
        #[arg(long)]
        class: Option<String>,
        /// Letters already redriven are taken again.
        #[arg(long)]
        again: bool,
        /// Print what would be sent and send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Ids of dead letters.
        ids: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    // Generated from the definitions above, so they never drift from them.
    match &args.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Args::command(),
                "projector",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            return match man_pages(dir) {
                Ok(n) => {
                    println!("wrote {n} man pages into {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
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
        Command::Status { json } => cli::status(&settings, json),
        Command::Replay {
            domain,
            no_wait,
            stall_timeout,
            force,
        } => cli::replay(&settings, &domain, !no_wait, stall_timeout, force),
        Command::Rebuild {
            domain,
            component,
            url,
            rollback,
            drop_previous,
            force,
            stall_timeout,
            json,
        } => cli::rebuild(
            &settings,
            &domain,
            cli::RebuildAction::from_flags(rollback, drop_previous),
            projector_host::ops::rebuild::Options {
                component,
                url,
                force,
                stall_timeout: std::time::Duration::from_secs(stall_timeout),
                interrupt: Default::default(),
            },
            json,
        ),
        Command::Canary {
            file,
            promote_after,
            expect,
            events,
            idle_timeout,
            from_start,
            url,
            examples,
            json,
        } => cli::canary(
            &settings,
            &file,
            projector_host::ops::canary::Options {
                promote_after,
                expect,
                max_events: events,
                idle_timeout: idle_timeout.map(std::time::Duration::from_secs),
                from_start,
                url,
                examples,
            },
            json,
        ),
        Command::Prune { tombstone_days } => cli::prune(
            &settings,
            tombstone_days.unwrap_or(settings.prune.tombstone_days),
        ),
        Command::Dlq { command } => match command {
            DlqCommand::List { class, json } => cli::dlq_list(&settings, class.as_deref(), json),
            DlqCommand::Show { id, json } => cli::dlq_show(&settings, &id, json),
            DlqCommand::Redrive {
                all,
                class,
                again,
                dry_run,
                ids,
            } => cli::dlq_redrive(
                &settings,
                projector_host::dlq::redrive::Selection {
                    all,
                    class,
                    ids,
                    again,
                },
                dry_run,
            ),
        },
        Command::Check {
            against,
            files,
            json,
        } => cli::check(&settings, against.as_deref(), &files, json),
        Command::Completions { .. } | Command::Man { .. } => unreachable!("answered above"),
        Command::New { domain, dir, sdk } => cli::new(&domain, dir, &sdk),
        Command::Test { dir } => cli::test(&settings, &dir),
        Command::Deploy { file, url } => cli::deploy(&settings, &file, url.as_deref()),
        Command::SchemaDoc { write, files } => cli::schema_doc(&settings, write.as_deref(), &files),
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

/// Writes `projector.1` and `projector-<sub>[-<sub>].1` for every
/// subcommand into `dir`; returns how many.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fn write(cmd: clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<usize> {
        let cmd = cmd.name(name.to_owned());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        let mut n = 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            n += write(sub.clone(), &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(n)
    }
    let mut cmd = Args::command();
    cmd.build();
    write(cmd, "projector", dir)
}
