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
    /// Agent configuration; `agent.d/*.yaml` beside it is merged after it.
    #[arg(long, global = true, env = "TRUEUP_CONFIG", default_value = trueup::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Where the desired state comes from: a directory (a checkout) or a
    /// Git URL (file://, git://, ssh://, https://). Overrides `repo` in the
    /// configuration.
    #[arg(long, global = true, env = "TRUEUP_SOURCE")]
    source: Option<String>,
    /// The host branch, a template over facts. Overrides `branch` in the
    /// configuration. Default hosts/{hostname}.
    #[arg(long, global = true, env = "TRUEUP_BRANCH")]
    branch: Option<String>,
    /// Use the cached repository: no fetch, no notes push.
    #[arg(long, global = true)]
    offline: bool,
    /// Prefix for every managed path (for tests and images). Default /.
    #[arg(long, global = true, env = "TRUEUP_ROOT")]
    root: Option<PathBuf>,
    /// State directory: reports, backups of replaced files. Default
    /// /var/lib/trueup.
    #[arg(long, global = true, env = "TRUEUP_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The run lock shared with the agent. Default /run/trueup/lock, or
    /// run.lock in a non-default state directory.
    #[arg(long, global = true, env = "TRUEUP_LOCK")]
    lock_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Read facts from this JSON or YAML file instead of the machine.
    #[arg(long = "facts", global = true, value_name = "FILE")]
    facts_file: Option<PathBuf>,
    /// Refuse a branch that declares a file, directory or symlink outside
    /// this absolute path (repeatable; replaces `allowed_paths`).
    #[arg(long = "allowed-path", global = true, value_name = "PATH", value_parser = absolute_path)]
    allowed_paths: Vec<PathBuf>,
    /// Where fleet commands read the hosts' notes: a Git URL. Default
    /// fleet.yaml's `reports:`, else its `repo:`, else --source.
    #[arg(long, global = true, env = "TRUEUP_REPORTS", value_name = "URL")]
    reports: Option<String>,
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
    /// Parse and render a checkout; exit 1 on any error. With --fleet,
    /// render it for every host of its fleet.yaml, each with its own facts.
    Validate {
        dir: PathBuf,
        /// Render for every host in DIR/fleet.yaml, with the facts of each
        /// host's latest report (hosts/<host>.facts.yaml when it has none).
        #[arg(long)]
        fleet: bool,
    },
    /// Print the rendered desired state of a checkout.
    Render { dir: PathBuf },
    /// Print the facts templates see.
    Facts,
    /// The daemon: converge every interval, SIGHUP runs now, SIGTERM stops.
    Agent,
    /// The last run, whether the agent runs, and whether the host is paused.
    Status,
    /// Run the branch's health checks now. Exit 0 healthy, 2 unhealthy, 1 error.
    Health,
    /// Pause convergence on this host (checks still run and report).
    Disable {
        /// Why, shown by `status` and in reports.
        #[arg(long)]
        reason: String,
    },
    /// Resume convergence.
    Enable,
    /// Age-encrypted secrets in a fleet checkout: recipients, encrypt,
    /// rekey, edit.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// The whole fleet, read from the repository's notes.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Directory to write man/ and completions/ into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Each host's SSH host key as its notes report it, beside the key
    /// fleet.yaml pins. Exit 2 when one differs.
    Recipients {
        /// The fleet checkout holding fleet.yaml.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Encrypt FILE (a path in the checkout) for hosts and groups and the
    /// admins, from --input or stdin.
    Encrypt {
        /// A host or group of fleet.yaml (repeatable); default: the file's
        /// secrets.files entry.
        #[arg(long = "to", value_name = "HOST|GROUP")]
        to: Vec<String>,
        /// The plaintext; stdin when absent.
        #[arg(long, value_name = "PLAINTEXT")]
        input: Option<PathBuf>,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        file: String,
    },
    /// Re-encrypt the secrets.files whose recipients changed, and only those.
    Rekey {
        /// An admin's age identity file or ssh-ed25519 private key
        /// (default: TRUEUP_SECRETS_IDENTITY).
        #[arg(long)]
        identity: Option<PathBuf>,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Decrypt FILE, open $VISUAL or $EDITOR, re-encrypt if it changed.
    Edit {
        #[arg(long)]
        identity: Option<PathBuf>,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        file: String,
    },
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Every host's latest note: branch tip, applied commit, behind,
    /// status, drift, age; and how far each host is behind main (or
    /// --from) and the rollout's state.
    Status {
        /// The commit the rollout is measured against.
        #[arg(long, value_name = "REF")]
        from: Option<String>,
    },
    /// Fast-forward host branches to a commit in waves, each gated by the
    /// hosts' own notes on that commit. Exit 1 when the rollout stops.
    Promote(PromoteArgs),
    /// Write a static HTML report of the fleet (index.html and a page per
    /// host) from the hosts' notes.
    Report {
        /// Directory to write the site into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct PromoteArgs {
    /// The commit to promote: a branch, tag or commit id of --source.
    #[arg(long, default_value = "main")]
    from: String,
    /// Promote only the hosts of this group (repeatable).
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// Promote only hosts whose name matches this glob (repeatable).
    #[arg(long = "hosts", value_name = "GLOB")]
    hosts: Vec<String>,
    /// Waves, comma-separated: groups or shares of the hosts not yet
    /// promoted (canary,25%,100%). Default: fleet.yaml's rollout.waves.
    #[arg(long)]
    waves: Option<String>,
    /// How long a wave may take to report back. Default: rollout.wait.
    #[arg(long)]
    wait: Option<String>,
    /// Unhealthy hosts a wave may have before the rollout stops.
    #[arg(long)]
    max_unhealthy: Option<u32>,
    /// Print the waves and branch moves; push nothing.
    #[arg(long)]
    dry_run: bool,
    /// How often the notes are read while a wave is out.
    #[arg(long, default_value = "5s")]
    poll: String,
}

impl PromoteArgs {
    fn options(&self) -> commands::PromoteOptions {
        commands::PromoteOptions {
            from: self.from.clone(),
            groups: self.groups.clone(),
            hosts: self.hosts.clone(),
            waves: self.waves.clone(),
            wait: self.wait.clone(),
            max_unhealthy: self.max_unhealthy,
            dry_run: self.dry_run,
            poll: Some(self.poll.clone()),
        }
    }
}

/// Whether the command starts libgit2 before anything else, whose start-up
/// initialises OpenSSL (some 10 million instructions and 3 MiB of libcrypto
/// pages). The agent and the fleet commands do (while the process has one
/// thread, so the system CA bundle can be left for later: `source::tls`).
/// A one-shot check, apply or health check starts it only when it first
/// needs it (`source::tls::start_libgit2`): a run whose tip did not move
/// reads the cache with gitoxide and never starts it. Commands that read no
/// repository never do.
fn starts_libgit2_first(command: &Command) -> bool {
    !matches!(
        command,
        Command::Validate { fleet: false, .. }
            | Command::Render { .. }
            | Command::Facts
            | Command::Status
            | Command::Disable { .. }
            | Command::Enable
            | Command::GenerateAssets { .. }
            | Command::Check
            | Command::Apply { .. }
            | Command::Health
    )
}

fn absolute_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("'{s}' is not an absolute path"))
    }
}

/// The one function of libm the binary calls (`f64::powf`, in indicatif's
/// rate estimate of `trueup fleet promote`), from the libm crate (a port of
/// musl's): defined here, it leaves libm.so out of the binary's libraries,
/// and every run 0.3 MiB of resident pages and the resolution of its
/// IFUNCs lighter.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

fn main() -> ExitCode {
    // One malloc arena for the whole process: trueup's threads are few and
    // short (an object copy, the prestager, blocking work of the agent),
    // and an arena per thread kept each one's freed memory resident beside
    // the main heap (a second arena held 450 KiB at the end of a first
    // apply). The threads that run beside the main thread allocate little
    // (see prestage.rs).
    // SAFETY: mallopt only sets an allocator parameter; it runs before any
    // other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // Everything is bound by now: the loader's tables are not read again
    // (see loader.rs), about 1.3 MiB of resident pages.
    trueup::loader::release_loader_tables();
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Agent));
    let settings = match trueup::config::load(&cli.config) {
        Ok(s) => s,
        // Commands that only read a checkout do not need the configuration.
        Err(_)
            if matches!(
                cli.command,
                Command::Validate { .. } | Command::Render { .. } | Command::Facts
            ) =>
        {
            trueup::config::Settings::default()
        }
        Err(e) => {
            eprintln!("trueup: configuration error: {e}");
            return ExitCode::from(trueup::config::EXIT_CONFIG as u8);
        }
    };
    let common = Common::new(
        settings,
        cli.source,
        cli.root,
        cli.state_dir,
        cli.lock_file,
        cli.format,
        cli.facts_file,
    )
    .with_git_options(cli.branch, cli.offline)
    .with_allowed_paths(cli.allowed_paths);
    // An agent without a repository can only fail the same way again: a
    // configuration error, which systemd does not restart
    // (RestartPreventExitStatus=78). A freshly installed package is here
    // until cloud-init or an admin writes the repository.
    if matches!(cli.command, Command::Agent) && common.source.is_none() {
        eprintln!(
            "trueup: configuration error: no repository: set repo in {} or in a file in \
             agent.d/ beside it (or give --source), then restart the agent",
            cli.config.display()
        );
        return ExitCode::from(trueup::config::EXIT_CONFIG as u8);
    }
    if starts_libgit2_first(&cli.command) {
        // SAFETY: the process still has one thread (parsing, logging and
        // the configuration start none), and nothing has touched libgit2.
        unsafe { trueup::source::tls::defer_system_roots() };
    }
    let result = match &cli.command {
        Command::Check => commands::check(&common),
        Command::Apply {
            dry_run,
            detailed_exitcodes,
        } => commands::apply(&common, *dry_run, *detailed_exitcodes),
        Command::Validate { dir, fleet: false } => commands::validate(&common, dir),
        Command::Validate { dir, fleet: true } => {
            commands::validate_fleet(&common, dir, cli.reports.as_deref())
        }
        Command::Render { dir } => commands::render(&common, dir),
        Command::Facts => commands::print_facts(&common),
        Command::Agent => commands::agent(&common),
        Command::Status => commands::status(&common),
        Command::Health => commands::health(&common),
        Command::Disable { reason } => commands::disable(&common, reason),
        Command::Enable => commands::enable(&common),
        Command::Secrets { command } => match command {
            SecretsCommand::Recipients { dir } => {
                commands::secrets_recipients(&common, cli.reports.as_deref(), dir)
            }
            SecretsCommand::Encrypt {
                to,
                input,
                dir,
                file,
            } => commands::secrets_encrypt(dir, to, input.as_deref(), file),
            SecretsCommand::Rekey { identity, dir } => {
                commands::secrets_rekey(dir, identity.as_deref())
            }
            SecretsCommand::Edit {
                identity,
                dir,
                file,
            } => commands::secrets_edit(dir, identity.as_deref(), file),
        },
        Command::Fleet {
            command: FleetCommand::Status { from },
        } => commands::fleet_status(&common, cli.reports.as_deref(), from.as_deref()),
        Command::Fleet {
            command: FleetCommand::Promote(p),
        } => commands::fleet_promote(&common, cli.reports.as_deref(), &p.options()),
        Command::Fleet {
            command: FleetCommand::Report { out },
        } => commands::fleet_report(&common, cli.reports.as_deref(), out),
        Command::GenerateAssets { out } => generate_assets(out),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // The reader of our output went away (`| head`): nothing to say.
        Err(e) if commands::out::is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<trueup::agent::Misconfigured>().is_some() => {
            eprintln!("trueup: {e}; fix it, then restart the agent");
            ExitCode::from(trueup::config::EXIT_CONFIG as u8)
        }
        Err(e) => {
            eprintln!("trueup: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

/// Logs to the journal with structured fields when systemd started us
/// (`JOURNAL_STREAM` is set), to stderr otherwise. One-shot commands print
/// their own results, so they log only errors unless `TRUEUP_LOG` asks for
/// more; the agent logs at info.
fn init_logging(daemon: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if daemon { "info" } else { "error" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRUEUP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        registry
            .with(journald.with_syslog_identifier("trueup".into()))
            .init();
        return;
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .init();
}

/// Man pages (one per command) and bash, zsh and fish completions, all
/// generated from the clap definitions so they never drift from the CLI.
fn generate_assets(out: &std::path::Path) -> anyhow::Result<i32> {
    use anyhow::Context;
    use clap::CommandFactory;
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).context("writing man pages")?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "trueup", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary's own `pow` (libm's stands aside): exact where the
    /// answer is exact, within an ulp elsewhere, and IEEE's special cases.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_binarys_pow_is_libms() {
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(10.0, -2.0), 0.01);
        assert_eq!(pow(-2.0, 3.0), -8.0);
        assert_eq!(pow(0.0, 0.0), 1.0);
        assert!((pow(0.5, 0.5) - std::f64::consts::FRAC_1_SQRT_2).abs() <= f64::EPSILON);
        assert!((pow(std::f64::consts::E, 2.5) - 12.182_493_960_703_473).abs() <= 1e-14);
        assert!(pow(-1.0, 0.5).is_nan());
        assert_eq!(pow(0.0, -1.0), f64::INFINITY);
    }

    #[test]
    fn one_shot_runs_start_libgit2_only_when_they_need_it() {
        let render = Command::Render { dir: ".".into() };
        for one_shot in [
            Command::Check,
            Command::Health,
            Command::Apply {
                dry_run: false,
                detailed_exitcodes: false,
            },
            render,
            Command::Status,
        ] {
            assert!(!starts_libgit2_first(&one_shot));
        }
        assert!(starts_libgit2_first(&Command::Agent));
    }
}
