//! The `mtls-gateway` command: parse the command line, load the configuration, run.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::SecretString;

use mtls_gateway::config::{Config, LogFormat};
use mtls_gateway::p12::{self, DiagnosisPolicy, Verdict};
use mtls_gateway::server::{self, RunOptions};

/// Pingora modules whose debug output includes request headers.
const HEADER_DUMPING_TARGETS: [&str; 4] = [
    "pingora_core::protocols::http",
    "pingora_proxy::proxy_h1",
    "pingora_proxy::proxy_h2",
    "pingora_proxy::proxy_custom",
];

/// Exit status for a usage error: a missing password, an unreadable file.
const EXIT_USAGE: u8 = 1;
/// Exit status when the input was read but is not acceptable: bad config, unusable P12.
const EXIT_INVALID: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "mtls-gateway", version, about = "Egress mTLS gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Take over the listening sockets of a running instance without dropping requests.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration file and list every problem in it.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Work with PKCS#12 files.
    #[command(subcommand)]
    P12(P12Command),
}

#[derive(Debug, Subcommand)]
enum P12Command {
    /// Diagnose a P12 file as a client identity. The password comes from --password-file or
    /// MTLS_GATEWAY_P12_PASSWORD, never from the command line.
    Inspect {
        file: PathBuf,
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Warn when the certificate expires within this many days.
        #[arg(long, default_value_t = p12::DEFAULT_EXPIRES_SOON_DAYS)]
        expires_soon_days: i64,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Run { config, upgrade } => {
            let options = RunOptions {
                upgrade,
                config_path: Some(config.clone()),
            };
            run(&config, options)
        }
        Command::Check { config } => check(&config),
        Command::P12(P12Command::Inspect {
            file,
            password_file,
            json,
            expires_soon_days,
        }) => inspect(&file, password_file.as_deref(), json, expires_soon_days),
    }
}

fn run(path: &Path, options: RunOptions) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    init_logging(&config);
    tracing::info!(config = %path.display(), "configuration loaded");

    match server::build(&config, options) {
        Ok(server) => server.run_forever(),
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            eprintln!("{}: valid", path.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{problems}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn inspect(file: &Path, password_file: Option<&Path>, json: bool, soon_days: i64) -> ExitCode {
    let password = match read_password(password_file) {
        Ok(password) => password,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let der = match std::fs::read(file) {
        Ok(der) => der,
        Err(e) => {
            eprintln!("cannot read {}: {e}", file.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let policy = DiagnosisPolicy {
        expires_soon: time::Duration::days(soon_days),
        ..DiagnosisPolicy::default()
    };

    let report = p12::diagnose(der, password, &policy).report;

    let rendered = if json {
        serde_json::to_string_pretty(&report)
            .map(|s| s + "\n")
            .unwrap_or_default()
    } else {
        report.to_string()
    };
    let _ = std::io::stdout().write_all(rendered.as_bytes());
    match report.verdict {
        Verdict::Usable => ExitCode::SUCCESS,
        Verdict::Unusable => ExitCode::from(EXIT_INVALID),
    }
}

/// A password file's single trailing newline is dropped: `echo secret > file` is common, and a
/// P12 password that really ends in a newline is not.
fn read_password(password_file: Option<&Path>) -> Result<SecretString, String> {
    if let Some(path) = password_file {
        let mut text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        return Ok(SecretString::from(text));
    }
    match std::env::var("MTLS_GATEWAY_P12_PASSWORD") {
        Ok(password) => Ok(SecretString::from(password)),
        Err(_) => Err(
            "no password: pass --password-file FILE or set MTLS_GATEWAY_P12_PASSWORD \
                       (never on the command line)"
                .to_owned(),
        ),
    }
}

fn init_logging(config: &Config) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Pingora's debug lines print whole request headers, credentials included; no log level
    // may turn them on.
    for quiet in HEADER_DUMPING_TARGETS {
        if let Ok(directive) = format!("{quiet}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
