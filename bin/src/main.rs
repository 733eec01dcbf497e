//! `run-pipeline`: run, validate and explain JSON-configured pipelines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dataflow_engine::plan::Pipeline;
use dataflow_engine::spec::PipelineSpec;
use dataflow_engine::{Error, Result};

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
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
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

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},datafusion=warn,deltalake=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_spec(args: &ConfigArgs) -> Result<PipelineSpec> {
    let text = std::fs::read_to_string(&args.config).map_err(|e| {
        Error::config(
            display(&args.config),
            None,
            format!("cannot read the config file: {e}"),
        )
    })?;
    PipelineSpec::load(&text, &args.sets, &|name| std::env::var(name).ok())
}

async fn compile(args: &ConfigArgs) -> Result<Pipeline> {
    let spec = load_spec(args)?;
    Pipeline::compile(&spec, &dataflow_connectors::registry()).await
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
        Command::Validate(args) => {
            let pipeline = compile(args).await?;
            println!(
                "{}: valid ({} steps, {} load(s))",
                display(&args.config),
                pipeline.steps.len(),
                pipeline.loads.len()
            );
        }
        Command::Explain(args) => {
            let pipeline = compile(args).await?;
            print!("{}", pipeline.explain().await?);
        }
        Command::Run(args) => {
            let pipeline = compile(args).await?;
            let summary = pipeline.run(interrupted()).await?;
            eprint!("{summary}");
        }
    }
    Ok(())
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn main() -> ExitCode {
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
