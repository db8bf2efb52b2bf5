//! The `fipsrelay` command: argument parsing and dispatch. `run` (the
//! default) is the long-running relay in `fipsrelay::control`; every other
//! subcommand is a one-shot command in `fipsrelay::cli`. This file only
//! turns arguments into a call and its result into an exit status; it holds
//! no logic of its own, and it is the one place `anyhow` is used.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fipsrelay::config::{self, Config, Source};
use fipsrelay::{cli, control, logging};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "fipsrelay", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FIPSRELAY_COMMIT"), ")"), about = "FIPS TLS forwarder for the Datadog Agent (US1-FED)")]
struct Cli {
    /// Config file (TOML). Default: $FIPSRELAY_CONFIG when set, else
    /// /etc/fipsrelay/fipsrelay.toml when it exists, else built-in defaults.
    #[arg(long, short, global = true, value_name = "PATH", env = "FIPSRELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Validate the config and every file it names (as `run` does before binding),
    /// then print the effective settings and port table.
    CheckConfig,
    /// Print the version and commit, the FIPS module, the TLS offer and the I/O backends.
    Version,
    /// Demo on an embedded default: mock intake + this relay + a verified loadgen run.
    Demo {
        /// How long the load runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent Agent-like connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The mock-intake binary (default: beside fipsrelay).
        #[arg(long, value_name = "PATH")]
        mock_intake: Option<PathBuf>,
        /// The loadgen binary (default: beside fipsrelay).
        #[arg(long, value_name = "PATH")]
        loadgen: Option<PathBuf>,
        /// Keep the demo's files (PKI, config, logs) for a look afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Check every upstream through the relay's own stack: resolve, connect,
    /// FIPS TLS handshake, one request in the protocol the relay would speak;
    /// a fix per failure, each cause once. Then this host: a relay on the
    /// listen ports (or what holds them), and the Agent's fips.* settings.
    /// Exit 0 when all pass, 1 otherwise.
    Diagnose {
        /// Send GET /api/v1/validate with this key to the API host (never printed).
        #[arg(long, value_name = "KEY", env = "DD_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// The Agent's config to check against the relay's listen settings.
        /// Default: /etc/datadog-agent/datadog.yaml, skipped when absent.
        #[arg(long, value_name = "PATH")]
        agent_config: Option<PathBuf>,
    },
    /// Host tuning for high volume (read-only checks).
    #[command(subcommand)]
    Tuning(TuningCommand),
    /// Health probe for images without a shell (ECS healthCheck, Docker
    /// HEALTHCHECK): GET the status port's /health (readiness) or
    /// /health/live; exit 0 on 200, 1 otherwise. The port comes from the
    /// config and DD_FIPS_PORT_RANGE_START, as for `run`.
    Probe {
        /// `ready` (/health) or `live` (/health/live).
        #[arg(long, default_value = "ready", value_parser = ["ready", "live"])]
        check: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
    },
    /// Read the Datadog FIPS Proxy's HAProxy config and print the equivalent
    /// fipsrelay.toml on stdout: the settings that differ from fipsrelay's
    /// defaults, then (as comments) what was not carried over and why. Exit 0
    /// when printed, 2 when the file cannot be read or is not HAProxy config.
    Migrate {
        /// The FIPS Proxy's config.
        #[arg(long, value_name = "PATH", default_value = cli::migrate::DEFAULT_FROM)]
        from: PathBuf,
    },
    /// Ask the running relay to reload its config (POST /admin/reload on the
    /// status port, with the token from admin.token_file; both from the config,
    /// as for `run`) and print its answer. Exit 0 when it applied the config,
    /// or restarted in place and is ready again; 1 when it refused, or when
    /// no relay answers.
    Reload {
        /// After a restart in place, wait at most this many seconds for the relay
        /// to be ready again. Default: shutdown.drain_timeout + 30.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
}

#[derive(Subcommand)]
enum TuningCommand {
    /// Compare this host with a tuning profile; print each difference with its fix.
    /// Exit 0 when nothing differs, 1 otherwise.
    Check {
        /// One of: throughput (default), latency, many-connections.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Also print the settings that already match.
        #[arg(long, short)]
        verbose: bool,
    },
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<(Config, Source)> {
    Ok(config::load(path, &|k| std::env::var(k).ok())?)
}

fn main() -> ExitCode {
    // No transparent huge pages for this process: with them the allocator's
    // first arenas alone cost ~9 MB of resident memory at idle (measured).
    // Done first, before the allocator maps much; mimalloc is also built with
    // `no_thp` so it never asks for them itself.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Some(
            Command::CheckConfig
                | Command::Version
                | Command::Tuning(_)
                | Command::Diagnose { .. }
                | Command::Migrate { .. }
        )
    ) {
        // Printing commands end quietly when their reader goes away (`| head`).
        // `run` keeps Rust's SIGPIPE = ignore: a closed socket must be an error, not a signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::CheckConfig => check_config(cli.config),
        Command::Version => version(),
        Command::Demo { seconds, connections, mock_intake, loadgen, keep } => {
            let opts =
                cli::demo::DemoOptions { seconds: seconds.clamp(1, 3600), connections, mock_intake, loadgen, keep };
            cli::demo::run(&opts).map_err(anyhow::Error::from)
        }
        Command::Diagnose { api_key, agent_config } => {
            return match diagnose(cli.config, api_key, agent_config) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("{}", logging::scrub(&format!("fipsrelay: error: {}", error_text(&e))));
                    ExitCode::from(2)
                }
            };
        }
        Command::Probe { check, timeout } => {
            return match probe(cli.config, &check, std::time::Duration::from_secs(timeout.clamp(1, 60))) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fipsrelay probe: {}", error_text(&e));
                    ExitCode::from(1)
                }
            };
        }
        Command::Reload { wait } => {
            return match reload(cli.config, wait.map(|w| std::time::Duration::from_secs(w.clamp(1, 3600)))) {
                Ok(cli::reload::Outcome::Applied(answer)) => {
                    println!("{answer}");
                    ExitCode::SUCCESS
                }
                Ok(cli::reload::Outcome::Restarted { answer, after }) => {
                    println!("{answer}");
                    println!(
                        "restarted in place: ready again after {:.1}s (GET /health answered 200)",
                        after.as_secs_f64()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}", logging::scrub(&format!("fipsrelay reload: {}", error_text(&e))));
                    ExitCode::from(1)
                }
            };
        }
        Command::Migrate { from } => {
            return match cli::migrate::read(&from, &|k| std::env::var(k).ok()) {
                Ok(m) => {
                    print!("{}", cli::migrate::render(&m, &from));
                    eprintln!(
                        "fipsrelay migrate: {}: settings carried: {}; directives not carried over: {} (listed at the end of the output)",
                        from.display(),
                        m.carried.len(),
                        m.not_carried.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fipsrelay migrate: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Tuning(TuningCommand::Check { profile, verbose }) => {
            return match tuning_check(cli.config, profile, verbose) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("fipsrelay: error: {}", error_text(&e));
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", logging::scrub(&format!("fipsrelay: error: {}", error_text(&e))));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: most of our errors already
/// quote their cause in their own message.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    // A SIGHUP (reload) that comes before the control loop installs its
    // handler must not kill the relay with the default action.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let (config, source) = load(path.as_deref())?;
    logging::init(&config.log_level, config.log_format);
    control::run(config, source)?;
    Ok(())
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, source) = load(path.as_deref())?;
    // Every check `run` makes before binding: the same inputs fail both.
    control::preflight(&config, false)?;
    cli::check_config::print(&config, &source, &|k| std::env::var(k).ok())?;
    Ok(())
}

fn version() -> anyhow::Result<()> {
    cli::version::print();
    Ok(())
}

fn tuning_check(path: Option<PathBuf>, profile: Option<String>, verbose: bool) -> anyhow::Result<u8> {
    // The worker count comes from the config when one is readable; 0 = one per CPU.
    let workers = load(path.as_deref()).map(|(c, _)| c.threads).unwrap_or(0);
    Ok(cli::tuning::print_check(profile.as_deref(), workers, verbose)?)
}

fn diagnose(path: Option<PathBuf>, api_key: Option<String>, agent_config: Option<PathBuf>) -> anyhow::Result<bool> {
    let (config, source) = load(path.as_deref())?;
    let agent = cli::diagnose::local::AgentConfigPath::new(agent_config);
    Ok(cli::diagnose::report(&config, &source, api_key.as_deref(), &agent)?)
}

/// `probe`: one GET on the status port, bounded by `timeout` as a whole.
fn probe(path: Option<PathBuf>, check: &str, timeout: std::time::Duration) -> anyhow::Result<String> {
    let (config, _) = load(path.as_deref())?;
    let check = if check == "live" { cli::probe::Check::Live } else { cli::probe::Check::Ready };
    Ok(cli::probe::run(&config, check, timeout)?)
}

/// `reload`: ask the running relay, report its answer.
fn reload(path: Option<PathBuf>, wait: Option<std::time::Duration>) -> anyhow::Result<cli::reload::Outcome> {
    let (config, source) = load(path.as_deref())?;
    Ok(cli::reload::run(&config, &source, wait)?)
}
