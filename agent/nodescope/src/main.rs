//! `nodescope`: the binary edge. Parses the command line, loads configuration, builds the
//! runtime and hands over to [`app::run`]. `anyhow` is used here and nowhere below.

mod app;
mod config;
mod http;
mod pipeline;
mod resource;
mod runner;
mod selfstats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use config::{Checks, Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "nodescope",
    version,
    about = "Per-node observability agent and profiling daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (host metrics, probes, profiler, HTTP API, exporters).
    Run {
        /// TOML configuration file; without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print every problem found: syntax, types and values,
    /// and what `run` depends on (the host root, token and TLS files, WAL directories).
    Validate {
        /// The TOML file to check.
        file: PathBuf,
        /// Check the file alone, not the files and directories it refers to (for a config
        /// checked on another machine than the node it is for).
        #[arg(long)]
        offline: bool,
    },
    /// Profile a process, a container or the whole node through the local agent's HTTP
    /// API and write the result (pprof, SVG flame graph or folded stacks) to a file.
    Profile(nodescope_profiler::ProfileArgs),
    /// Record an incident on the local agent (the window before now, then `--after` at a
    /// higher profiling rate), wait for its bundle and download it.
    Incident(nodescope_recorder::IncidentArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file, offline } => validate(&file, offline),
        Command::Run { config } => run(config),
        Command::Profile(args) => profile(&args),
        Command::Incident(args) => incident(&args),
    }
}

fn load(path: Option<&PathBuf>, checks: Checks) -> Result<Config, config::ConfigError> {
    Config::load(
        path.map(PathBuf::as_path),
        |k| std::env::var(k).ok(),
        checks,
    )
}

fn validate(file: &PathBuf, offline: bool) -> ExitCode {
    let checks = if offline {
        Checks::Offline
    } else {
        Checks::Environment
    };
    match load(Some(file), checks) {
        Ok(_) => {
            println!("{}: configuration is valid", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn profile(args: &nodescope_profiler::ProfileArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(nodescope_profiler::run_profile_cli(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn incident(args: &nodescope_recorder::IncidentArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(nodescope_recorder::run_incident_cli(args)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(c: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&c.agent.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match c.agent.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config_path: Option<PathBuf>) -> ExitCode {
    let config = match load(config_path.as_ref(), Checks::Environment) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let malloc = nodescope_httpguard::tune_allocator();
    init_logging(&config);
    if !malloc.is_empty() {
        tracing::debug!(settings = ?malloc, "glibc malloc tuned");
    }
    raise_open_files_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .thread_name("nodescope")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(app::run(config));
    // `app::run` has already waited for everything it owns until `agent.shutdown_timeout`;
    // a thread still blocked past it (a hung statfs, a profile's symbolization) must not
    // hold the exit, as dropping the runtime would (it waits for blocking tasks).
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-files limit to the hard one (systemd's and most container runtimes'
/// soft default of 1024 is below what the cgroup collector keeps open on a busy node; every
/// such set is bounded by its own cap).
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(from = old, to = lim.rlim_max, "raised the open-files limit");
            }
        }
    }
}

/// `context: cause: cause`, leaving out a cause whose text the message before it already
/// contains (library errors often quote their source, e.g. "reading /x: No such file").
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
