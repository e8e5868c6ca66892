//! `domicile`: run a Domicile gateway, a regional node, or a whole local federation.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use domicile::dev::{self, DevOptions};
use domicile_gateway::{Gateway, GatewayConfig};
use domicile_node::{Node, NodeConfig};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Domicile: a data-residency-aware federated gateway for CX data.
#[derive(Debug, Parser)]
#[command(name = "domicile", version, about)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a gateway and three nodes (DE, FR, US) on loopback with synthetic data.
    Dev {
        /// Gateway listen address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Keep the nodes' SQLite files here (default: a temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Subjects per region.
        #[arg(long, default_value_t = 10_000)]
        subjects: usize,
        /// Interactions per region.
        #[arg(long, default_value_t = 100_000)]
        interactions: usize,
        /// Seed of the synthetic data generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Tenant to load the data under.
        #[arg(long, default_value = "demo")]
        tenant: String,
        /// Print the example and exit instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Run the gateway.
    Gateway {
        /// Gateway configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a regional node.
    Node {
        /// Node configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Redact text read line by line from standard input with a country's rules, as a node does
    /// before a comment leaves the region; prints each redacted line.
    ///
    /// Example: `echo "Call Jürgen on +49 171 2345678" | domicile redact --country DE --name "Jürgen Müller"`
    Redact {
        /// ISO 3166-1 alpha-2 country whose rules apply (national identifiers differ).
        #[arg(long)]
        country: String,
        /// The subject's known name; its tokens are redacted too. Repeatable.
        #[arg(long)]
        name: Vec<String>,
        /// Print a summary of what was redacted, by kind, to standard error at the end.
        #[arg(long)]
        stats: bool,
    },
}

fn init_logging(json: bool, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Reads and validates a TOML configuration file; errors name the file and the option.
fn read_config<T, E: std::fmt::Display>(
    path: &std::path::Path,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev {
            listen,
            data_dir,
            subjects,
            interactions,
            seed,
            tenant,
            once,
        } => {
            init_logging(cli.log_json, "warn");
            let opts = DevOptions {
                listen,
                data_dir,
                subjects,
                interactions,
                seed,
                tenant,
            };
            let federation = dev::start(&opts).await?;
            if !once {
                println!("\nServing; Ctrl-C to stop.");
                ctrl_c().await;
            }
            federation.shutdown().await;
        }
        Command::Gateway { config } => {
            init_logging(cli.log_json, "info");
            let config = read_config(&config, GatewayConfig::from_toml)?;
            let listener = TcpListener::bind(config.listen).await?;
            tracing::info!(addr = %listener.local_addr()?, "gateway listening");
            domicile_gateway::serve(Gateway::new(config)?, listener, ctrl_c()).await?;
        }
        Command::Node { config } => {
            init_logging(cli.log_json, "info");
            let config = read_config(&config, NodeConfig::from_toml)?;
            let listener = TcpListener::bind(config.listen).await?;
            let node = Node::open(config)?;
            tracing::info!(addr = %listener.local_addr()?, "node listening");
            domicile_node::serve(node, listener, ctrl_c()).await?;
        }
        Command::Redact {
            country,
            name,
            stats,
        } => redact(&country, &name, stats)?,
    }
    Ok(())
}

/// `domicile redact`: standard input to standard output, one line at a time.
fn redact(country: &str, names: &[String], stats: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    anyhow::ensure!(
        domicile_proto::domain::is_country_code(country),
        "--country must be an ISO 3166-1 alpha-2 code in upper case, e.g. DE"
    );
    let redactor = domicile_node::redact::Redactor::for_country(country);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut counts = std::collections::BTreeMap::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading standard input (is it UTF-8?)")?;
        let redacted = redactor.redact(&line, &names);
        for (category, _) in &redacted.spans {
            *counts.entry(category.placeholder()).or_insert(0u64) += 1;
        }
        writeln!(out, "{}", redacted.text)?;
    }
    out.flush()?;
    if stats {
        for (placeholder, n) in counts {
            eprintln!("{placeholder} {n}");
        }
    }
    Ok(())
}
