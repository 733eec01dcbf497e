//! `run-pipeline`: run, validate, explain and schedule JSON-configured
//! pipelines, and show their run history.

mod endpoint;
mod history;
mod observe;
mod progress;
mod summary;
mod upkeep;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dataflow_engine::ops::history::{History, RunCause};
use dataflow_engine::ops::schedule::{run_schedules, Job, Reload};
use dataflow_engine::pipeline::Pipeline;
use dataflow_engine::secret::vault::Vault;
use dataflow_engine::spec::{MemoryLimit, Mode, PipelineSpec};
use dataflow_engine::{Error, Result};
use observe::Observer;
use progress::Progress;
use tokio_util::sync::CancellationToken;

/// Run JSON-configured data pipelines (extract → transform → load) on
/// Apache DataFusion.
///
/// Exit codes: 0 success, 1 runtime failure, 2 invalid config, 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "run-pipeline", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors (not even warnings, from any crate).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    /// Directory of the run history (default: `.dataflow/` in the working
    /// directory, for `run`, `schedule` and `history` alike).
    #[arg(long, global = true, value_name = "DIR", env = "DATAFLOW_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics while running, e.g.
    /// `127.0.0.1:9898` (port 0: any free port, logged with -v).
    #[arg(long, global = true, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Write the final metrics as JSON to this file on exit.
    #[arg(long, global = true, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// The most memory a run may use, e.g. `2GB`, `512MB`, `1.5GiB` (units
    /// are powers of 1024); joins, sorts and aggregations spill to disk
    /// beyond it. Overrides the config's `"memoryLimit"`; default: 75% of
    /// the machine's memory.
    #[arg(
        long,
        global = true,
        value_name = "SIZE",
        env = "DATAFLOW_MEMORY_LIMIT"
    )]
    memory_limit: Option<MemoryLimit>,
    /// Directory operators spill to and `MEMORY_AND_DISK` caches are written
    /// in (default: the system temp dir).
    #[arg(long, global = true, value_name = "DIR", env = "DATAFLOW_SPILL_DIR")]
    spill_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline once and print a summary.
    Run(ConfigArgs),
    /// Check a config: JSON, keys, methods, names and SQL; runs nothing.
    Validate(ConfigArgs),
    /// Print the logical and physical plan of every load step.
    Explain(ConfigArgs),
    /// Run batch pipelines on the cron expressions in their `"schedule"`
    /// keys until SIGINT/SIGTERM, then stop cleanly and exit 0.
    Schedule(ScheduleArgs),
    /// Show recorded runs, oldest first.
    History(HistoryArgs),
    /// Compact a Delta table's small files into bigger ones.
    Optimize(upkeep::OptimizeArgs),
    /// Delete the files of a Delta table that no recent version needs.
    Vacuum(upkeep::VacuumArgs),
}

#[derive(Debug, Args)]
struct ScheduleArgs {
    /// The pipeline configs (JSON), each with a `"schedule"`.
    #[arg(required = true)]
    configs: Vec<PathBuf>,
    /// Override a value in every config (see `run --set`).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
}

#[derive(Debug, Args)]
struct HistoryArgs {
    /// Only this pipeline's runs.
    pipeline: Option<String>,
    /// Only the last N records.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// The pipeline config (JSON).
    config: PathBuf,
    /// Override a config value before it is read, e.g.
    /// `--set steps[0].config.path=data/*.csv` (repeatable; JSON values such
    /// as `true` or `3` keep their type).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
}

/// The crates whose logs are ours; every other target is a dependency.
const OWN_CRATES: [&str; 3] = ["run_pipeline", "dataflow_engine", "dataflow_connectors"];

fn init_logging(cli: &Cli) {
    // Dependencies (DataFusion, delta-rs, its kernel, librdkafka) log their
    // own view of failures we report anyway in our error line ("commit
    // failed, aborting") and chatty notices: they are shown from -v on, one
    // level below ours. -q is errors only, ours only.
    let (own, dependencies) = match (cli.quiet, cli.verbose) {
        (true, _) => ("error", "off"),
        (false, 0) => ("warn", "off"),
        (false, 1) => ("info", "warn"),
        (false, _) => ("debug", "info"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let own = OWN_CRATES.map(|krate| format!("{krate}={own}")).join(",");
        tracing_subscriber::EnvFilter::new(format!("{dependencies},{own}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads a config (reading the Vault secrets it names, each once) and
/// applies the run-time flags that override it.
async fn load_spec(cli: &Cli, config: &Path, sets: &[String]) -> Result<PipelineSpec> {
    Loader::new(cli, config, sets)?.load().await
}

/// A config's text and the flags that override it: loaded again before
/// every scheduled run, so each run reads the secrets of its own time.
#[derive(Clone)]
struct Loader {
    text: String,
    sets: Vec<String>,
    memory_limit: Option<MemoryLimit>,
    spill_dir: Option<PathBuf>,
}

impl Loader {
    fn new(cli: &Cli, config: &Path, sets: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(config).map_err(|e| {
            Error::config(
                display(config),
                None,
                format!("cannot read the config file: {e}"),
            )
        })?;
        Ok(Loader {
            text,
            sets: sets.to_vec(),
            memory_limit: cli.memory_limit,
            spill_dir: cli.spill_dir.clone(),
        })
    }

    async fn load(&self) -> Result<PipelineSpec> {
        let env = |name: &str| std::env::var(name).ok();
        let vault = Vault::from_env(&env);
        let mut spec =
            PipelineSpec::load_with_secrets(&self.text, &self.sets, &env, &vault).await?;
        spec.memory_limit = self.memory_limit.or(spec.memory_limit);
        spec.spill_dir = self.spill_dir.clone();
        Ok(spec)
    }
}

async fn compile(cli: &Cli, args: &ConfigArgs) -> Result<Pipeline> {
    let spec = load_spec(cli, &args.config, &args.sets).await?;
    Pipeline::compile(&spec, &dataflow_connectors::registry()).await
}

/// A token cancelled by Ctrl-C or SIGTERM.
fn on_interrupt(what: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        interrupted().await;
        tracing::warn!("interrupted: {what}");
        cancel.cancel();
    });
    token
}

/// A scheduled job for each config; all configs are checked before any runs.
async fn jobs(cli: &Cli, args: &ScheduleArgs, observer: &Observer) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for config in &args.configs {
        let loader = Loader::new(cli, config, &args.sets)?;
        let spec = loader.load().await?;
        let schedule = spec.schedule.clone().ok_or_else(|| {
            Error::config(
                "schedule",
                None,
                format!(
                    "{} has no schedule: add e.g. \"schedule\": \"0 * * * *\", or use `run`",
                    display(config)
                ),
            )
        })?;
        let reload: Reload = Arc::new(move || {
            let loader = loader.clone();
            Box::pin(async move { loader.load().await })
        });
        jobs.push(Job {
            spec,
            schedule,
            runner: observer.runner(),
            reload: Some(reload),
        });
    }
    Ok(jobs)
}

async fn observed<T>(cli: &Cli, work: impl AsyncFnOnce(&Observer) -> Result<T>) -> Result<T> {
    let observer = Observer::start(
        cli.metrics_addr,
        cli.metrics_file.clone(),
        cli.state_dir.clone(),
    )
    .await?;
    let result = work(&observer).await;
    // The run's own error, if any, matters more than the metrics file's.
    let finished = observer.finish();
    let value = result?;
    finished?;
    Ok(value)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn main_inner(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Validate(args) => validate(cli, args).await,
        Command::Explain(args) => explain(cli, args).await,
        Command::Run(args) => run(cli, args).await,
        Command::Schedule(args) => schedule(cli, args).await,
        Command::History(args) => show_history(cli, args),
        Command::Optimize(args) => upkeep::optimize(args).await,
        Command::Vacuum(args) => upkeep::vacuum(args).await,
    }
}

/// `validate`: compiles the pipeline and says how big it is.
async fn validate(cli: &Cli, args: &ConfigArgs) -> Result<()> {
    let pipeline = compile(cli, args).await?;
    println!(
        "{}: valid ({} steps, {} load(s))",
        display(&args.config),
        pipeline.steps.len(),
        pipeline.loads.len()
    );
    Ok(())
}

/// `explain`: the plans of every load.
async fn explain(cli: &Cli, args: &ConfigArgs) -> Result<()> {
    let pipeline = compile(cli, args).await?;
    print!("{}", pipeline.explain().await?);
    Ok(())
}

/// `run`: a batch pipeline once, a streaming one until interrupted.
async fn run(cli: &Cli, args: &ConfigArgs) -> Result<()> {
    let spec = load_spec(cli, &args.config, &args.sets).await?;
    if spec.mode == Mode::Streaming {
        run_stream(cli, &spec).await
    } else {
        run_batch(cli, &spec).await
    }
}

/// Runs micro-batches until interrupted, with a line per batch and one at
/// the end.
async fn run_stream(cli: &Cli, spec: &PipelineSpec) -> Result<()> {
    let quiet = cli.quiet;
    let ended = observed(cli, async |observer| {
        let shutdown = on_interrupt("stopping after the current batch's commit point");
        let runner = observer.runner();
        runner
            .stream(spec, shutdown, |batch| {
                if !quiet {
                    eprintln!("{}", summary::batch_line(batch));
                }
            })
            .await
    })
    .await?;
    eprintln!("{}", summary::stream_line(&ended));
    Ok(())
}

/// Runs the pipeline once, with a progress bar, then prints the summary.
async fn run_batch(cli: &Cli, spec: &PipelineSpec) -> Result<()> {
    let progress = Progress::start(&spec.name, cli.quiet);
    let outcome = observed(cli, async |observer| {
        let shutdown = on_interrupt("cancelling the run");
        let mut runner = observer.runner();
        if let Some(progress) = &progress {
            runner = runner.with_progress(progress.counter());
        }
        runner.run(spec, RunCause::Manual, None, &shutdown).await
    })
    .await;
    // The bar goes before the summary or the error is printed.
    if let Some(progress) = progress {
        progress.finish();
    }
    eprint!("{}", summary::run_summary(&outcome?));
    Ok(())
}

/// `schedule`: runs every config on its schedule until interrupted.
async fn schedule(cli: &Cli, args: &ScheduleArgs) -> Result<()> {
    observed(cli, async |observer| {
        let jobs = jobs(cli, args, observer).await?;
        let shutdown = on_interrupt("stopping the schedules and running pipelines");
        run_schedules(jobs, shutdown).await;
        Ok(())
    })
    .await
}

/// `history`: the recorded runs, as a table or JSON lines.
fn show_history(cli: &Cli, args: &HistoryArgs) -> Result<()> {
    let dir = cli.state_dir.clone().unwrap_or_else(|| ".dataflow".into());
    let records = History::new(&dir).read(args.pipeline.as_deref(), args.last)?;
    history::print(&records, args.json)?;
    Ok(())
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn main() -> ExitCode {
    // Library errors (delta-rs's kernel, DataFusion) capture a backtrace
    // when RUST_BACKTRACE is set and print it as part of their message; an
    // error shown to the user never carries one. Panics keep theirs:
    // RUST_LIB_BACKTRACE only governs `Backtrace::capture`. Set before any
    // other thread starts.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(main_inner(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code() as u8)
        }
    }
}
