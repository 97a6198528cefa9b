//! The `ringlb` command line: `run`, `check` and `demo`.
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
    /// Serve with FILE; SIGTERM/SIGINT drain in-flight requests, then exit.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate FILE: exit 0, or print every error with its location and exit 1.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The tutorial: two built-in backends and a listener in front of them, no files needed.
    Demo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGLB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
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
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let c = match ringlb::config::Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("ringlb: refusing to start: {} has errors", config.display());
                    return ExitCode::FAILURE;
                }
            };
            match ringlb::runtime::run(c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringlb: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { port } => match ringlb::demo::run(port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringlb demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
