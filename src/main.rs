//! The `ringlb` command line: `run`, `check`, `tune` and `demo`.
//!
//! Runs on the main thread; it parses arguments, loads the config and hands over to
//! [`ringlb::runtime`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringlb",
    version,
    about = "A thread-per-core io_uring load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with FILE; SIGTERM/SIGINT drain in-flight requests, then exit; SIGHUP reloads FILE;
    /// SIGUSR2 starts this binary again (same path and arguments) on the same listening sockets,
    /// and drains once it serves.
    Run {
        /// The config file (TOML), e.g. ringlb.toml.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate FILE: exit 0, or print every error with its location and exit 1. Warns (exit 0)
    /// when a listener's address is already in use, naming the process when /proc tells.
    Check {
        /// The config file (TOML) to validate.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Audit this host for ringlb: print each finding (ok / warn / info) with its fix; exit 0.
    /// Without --config: one listener with the default backlog, one worker per allowed CPU.
    Tune {
        /// The config file (TOML) whose listeners and workers to audit for.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the findings as a JSON array of {check, status, observed, recommendation, fix}.
        #[arg(long)]
        json: bool,
    },
    /// The tutorial: two built-in backends and a listener in front of them, no files needed.
    Demo {
        /// The port the demo's listener binds on 127.0.0.1.
        #[arg(long, value_name = "PORT", default_value_t = 8080)]
        port: u16,
    },
}

fn main() -> ExitCode {
    // Colour only for a person at a terminal: files, pipes and journald get plain text, and
    // NO_COLOR (https://no-color.org) turns it off everywhere.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGLB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match ringlb::config::Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listener(s), {} target group(s))",
                    config.display(),
                    c.listeners.len(),
                    c.target_groups.len()
                );
                for l in &c.listeners {
                    for w in ringlb::tls::ocsp::warnings(l)
                        .into_iter()
                        .chain(ringlb::tls::client_auth::warnings(l))
                        .chain(l.warnings())
                    {
                        eprintln!("warning: {w}");
                    }
                    if let Some(holder) = ringlb::listener::owner::listening_holder(l.bind) {
                        eprintln!(
                            "warning: listener '{}': {} is already in use by {holder}; `ringlb run` would refuse to start",
                            l.name, l.bind
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            // Started by a running ringlb's SIGUSR2: its listening sockets come first.
            let inherited = match ringlb::upgrade::Inherited::from_env().transpose() {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("ringlb: upgrade: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let c = match ringlb::config::Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("ringlb: refusing to start: {} has errors", config.display());
                    if let Some(i) = &inherited {
                        i.report_failure(&format!("{} has errors:\n{errors}", config.display()));
                    }
                    return ExitCode::FAILURE;
                }
            };
            match ringlb::runtime::run(c, inherited) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringlb: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tune { config, json } => tune(config, json),
        Command::Demo { port } => match ringlb::demo::run(port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringlb demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `ringlb tune`: exit 0 with the findings; 1 only when the given config cannot be loaded.
fn tune(config: Option<PathBuf>, json: bool) -> ExitCode {
    let loaded = match &config {
        Some(path) => match ringlb::config::Config::load(path) {
            Ok(c) => Some(c),
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!(
                    "ringlb tune: cannot audit against {}: it has errors",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let facts = ringlb::tune::Facts::gather();
    let plan = ringlb::tune::Plan::new(loaded.as_ref(), facts.allowed_cpus.len());
    let findings = ringlb::tune::audit(&ringlb::tune::Host::system(), &facts, &plan);
    if json {
        println!("{}", ringlb::tune::render_json(&findings));
    } else {
        print!("{}", ringlb::tune::render_text(&findings, &plan));
    }
    ExitCode::SUCCESS
}
