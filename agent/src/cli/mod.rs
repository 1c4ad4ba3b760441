//! The `edge-agent` command line: `run` (the agent itself) and the local
//! commands an operator runs on the box, one module each: [`status`],
//! [`logs`], [`import`], [`slices`], and [`vmm`] (one guest on the
//! microVMM, which the agent starts per VM workload). The hidden
//! `container-monitor` is the per-container monitor the agent starts.

pub mod import;
pub mod logs;
pub mod slices;
pub mod status;
pub mod vmm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{agent, config};

/// mecvisor edge agent: keeps an edge box converged on its desired state.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: connect to the broker, accept signed desired state,
    /// reconcile it, and report back. Stops on SIGTERM/SIGINT.
    Run {
        /// Agent configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Log line format on stderr (filter with RUST_LOG, default info).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Show the agent's status; reads the store directly (and says the agent
    /// is not running) when no agent answers on the socket.
    Status {
        /// Agent configuration file; its data_dir locates socket and store.
        #[arg(long, value_name = "FILE", default_value = "/etc/mecvisor/agent.toml")]
        config: PathBuf,
        /// Status socket of the agent instead of the config's; the store is
        /// agent.db next to it.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Output format: a table for humans (default) or the JSON document.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
    /// Print a container workload's stdout and stderr, or a VM's serial
    /// console (rotated files included, oldest first), one line per record:
    /// `<UTC time> <stdout|stderr|mecvisor> <text>` (a VM's console lines
    /// are `stdout`); `mecvisor` lines say when a container started and how
    /// it ended.
    Logs {
        /// The workload's name.
        workload: String,
        /// Agent config (for its data directory).
        #[arg(long, value_name = "FILE", default_value = "/etc/mecvisor/agent.toml")]
        config: PathBuf,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Import an image for air-gapped sites into the agent's content store:
    /// an OCI image layout directory, an oci-archive or a docker-archive
    /// (`docker save`) tarball. Every blob is verified; a bad archive
    /// changes nothing. Imported images are kept by garbage collection;
    /// workloads name them as printed (`repository:tag`). Safe to run
    /// while the agent runs.
    Import {
        /// Layout directory or archive file.
        path: PathBuf,
        /// Repository for images whose archive gives only a tag (default
        /// `import/<file name>`).
        #[arg(long, value_name = "REPOSITORY")]
        name: Option<String>,
        /// Agent config (for its content store and platform).
        #[arg(long, value_name = "FILE", default_value = "/etc/mecvisor/agent.toml")]
        config: PathBuf,
    },
    /// The per-container monitor (started by the agent itself; not for
    /// people to run).
    #[command(hide = true)]
    ContainerMonitor {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run one KVM guest in this process on mecvisor's microVMM until the
    /// guest reboots or powers off, or SIGTERM/SIGINT arrives (the agent
    /// starts one per VM workload).
    Vmm(#[command(flatten)] vmm::VmmArgs),
    /// Show the network slices this box holds, read from the kernel (not
    /// from the agent): state, traffic and drops per direction, and packets
    /// dropped for trying to cross into another slice. Needs root.
    Slices {
        /// Output format: a table for humans (default) or JSON.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Status output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// The status JSON document.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal (not journald, files, pipes),
    // and never with NO_COLOR set (https://no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// On a box without CA certificates, points SSL_CERT_FILE at a trust
/// anchor that trusts nothing, so the registry client can be built (HTTPS
/// registries then need a configured `ca_file`). Runs while the process is
/// still single-threaded.
pub(crate) fn ensure_trust_anchor(config: &config::Config) {
    if std::env::var_os("SSL_CERT_FILE").is_some() {
        return;
    }
    match content_store::trust_anchor_file(&config.content.dir) {
        Ok(Some(path)) => {
            // SAFETY: called from main before any thread exists.
            unsafe { std::env::set_var("SSL_CERT_FILE", &path) };
        }
        Ok(None) => {}
        Err(e) => eprintln!("warning: cannot write a trust anchor: {e}"),
    }
}

/// Parses the command line and runs the command; the exit code says how it
/// went (2 for a configuration that cannot be loaded).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format } => {
            init_logging(log_format);
            let config = match config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::from(2);
                }
            };
            ensure_trust_anchor(&config);
            match agent::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Import { path, name, config } => import::run(&path, name.as_deref(), &config),
        Command::Vmm(args) => {
            init_logging(LogFormat::Text);
            vmm::main(args)
        }
        Command::ContainerMonitor { args } => {
            ExitCode::from(u8::try_from(containers::monitor::main(&args)).unwrap_or(1))
        }
        Command::Logs {
            workload,
            config,
            tail,
        } => {
            let config = match config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match logs::read(
                &config.containers.state_dir,
                &config.data_dir,
                &workload,
                tail,
            ) {
                Ok(lines) => {
                    for line in lines {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Slices { output } => match slices::read() {
            Ok(list) => print_as(output, &list, |l: &Vec<_>| slices::render(l)),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Status {
            config,
            socket,
            output,
        } => {
            let (socket, db, device) = match socket {
                Some(socket) => {
                    let db = socket.with_file_name("agent.db");
                    (socket, db, None)
                }
                None => match config::Config::load(&config) {
                    Ok(c) => (c.socket_path(), c.db_path(), Some(c.device)),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            match status::query(&socket, &db, device.as_deref()) {
                Ok(status) => print_as(output, &status, status::render),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints `value` as pretty JSON with `-o json`, else as `table` renders it.
fn print_as<T: serde::Serialize>(
    output: Option<Output>,
    value: &T,
    table: impl Fn(&T) -> String,
) -> ExitCode {
    match output {
        Some(Output::Json) => match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => print!("{}", table(value)),
    }
    ExitCode::SUCCESS
}
