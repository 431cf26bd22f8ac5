//! The `trueup` command: parses arguments, sets up logging, dispatches, and
//! turns an error chain into one line per cause and an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trueup::commands::{self, Common, Format};

/// Keeps plain Linux servers true to a Git branch.
#[derive(Debug, Parser)]
#[command(name = "trueup", version, about, propagate_version = true)]
struct Cli {
    /// Where the desired state comes from: a directory (a checkout).
    #[arg(long, global = true, env = "TRUEUP_SOURCE")]
    source: Option<String>,
    /// Prefix for every managed path (for tests and images).
    #[arg(long, global = true, default_value = "/", env = "TRUEUP_ROOT")]
    root: PathBuf,
    /// State directory: reports, backups of replaced files.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/trueup",
        env = "TRUEUP_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Read facts from this JSON or YAML file instead of the machine.
    #[arg(long = "facts", global = true, value_name = "FILE")]
    facts_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report drift, change nothing. Exit 0 in sync, 2 drift, 1 error.
    Check,
    /// Converge the machine. Exit 0 success, 1 error.
    Apply {
        /// Plan and report, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Exit 2 when changes were made, 4 on failures, 6 for both.
        #[arg(long)]
        detailed_exitcodes: bool,
    },
    /// Parse and render a checkout; exit 1 on any error.
    Validate { dir: PathBuf },
    /// Print the rendered desired state of a checkout.
    Render { dir: PathBuf },
    /// Print the facts templates see.
    Facts,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let common = Common {
        source: cli.source,
        root: cli.root,
        state_dir: cli.state_dir,
        format: cli.format,
        facts_file: cli.facts_file,
    };
    let result = match &cli.command {
        Command::Check => commands::check(&common),
        Command::Apply {
            dry_run,
            detailed_exitcodes,
        } => commands::apply(&common, *dry_run, *detailed_exitcodes),
        Command::Validate { dir } => commands::validate(&common, dir),
        Command::Render { dir } => commands::render(&common, dir),
        Command::Facts => commands::print_facts(&common),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("trueup: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr. One-shot commands print their own results, so only
/// errors are logged unless `TRUEUP_LOG` asks for more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRUEUP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
