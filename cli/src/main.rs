//! `domicile`: run a Domicile gateway, a regional node, or a whole local federation.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use domicile::dev::{self, DevOptions};
use domicile_gateway::{Gateway, GatewayConfig};
use domicile_node::{Node, NodeConfig};
use domicile_ops::lifecycle::terminated;
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
        /// Serve Prometheus metrics here: the gateway's at `/metrics`, each node's at
        /// `/metrics/<region>`.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: SocketAddr,
        /// Serve the console (the DPO and operations web page) here.
        #[arg(long, default_value = "127.0.0.1:8080")]
        console_listen: SocketAddr,
        /// Serve the gateway without authentication (a warning is logged). Gateway and nodes
        /// still talk mutual TLS.
        #[arg(long)]
        insecure: bool,
        /// Where the nodes keep their data: `sqlite` (a file per region) or `postgres` (a
        /// throwaway cluster from the machine's PostgreSQL binaries, a database per region).
        /// Default: `DOMICILE_FEDERATION_STORAGE`, else sqlite.
        #[arg(long)]
        storage: Option<String>,
    },
    /// Mint a development token (HS256) for a gateway whose `[auth]` has `hs256_secret_file`:
    /// `domicile dev` prints the secret file's path.
    Token {
        /// The shared secret file.
        #[arg(long)]
        secret_file: PathBuf,
        /// The tenant the token acts for.
        #[arg(long)]
        tenant: String,
        /// Operations, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        operations: Vec<String>,
        /// Purposes, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        purposes: Vec<String>,
        /// Without the DPO's authority (access, portability, erasure, legal holds).
        #[arg(long)]
        no_dpo: bool,
        /// Hours until it expires.
        #[arg(long, default_value_t = 12)]
        hours: u64,
    },
    /// Run the gateway.
    Gateway {
        /// Gateway configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a regional node (`domicile node --config node.toml`), or an operation on its files
    /// (`domicile node sweep --config node.toml`).
    Node {
        /// Node configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<NodeCommand>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List the federation's regions: countries, health and sealing key ids.
    Regions {
        #[command(flatten)]
        target: Target,
    },
    /// Run a cross-region aggregate: NPS, CSAT and volumes by the dimensions asked.
    Aggregate {
        #[command(flatten)]
        target: Target,
        /// Tenant whose data to aggregate.
        #[arg(long)]
        tenant: String,
        /// Group by these, comma-separated: region, country, channel, month, day.
        #[arg(long, default_value = "country,channel", value_delimiter = ',')]
        group_by: Vec<String>,
        /// Differential-privacy epsilon to spend (capped by each region's policy).
        #[arg(long)]
        epsilon: Option<f64>,
    },
    /// Bulk-import a CX export (one interaction per row, .csv or .jsonl) through the gateway,
    /// sealed on this machine. The column mapping is documented in `cli/src/load.rs` and the
    /// README; every unreadable or refused row is reported with its number and reason.
    Load {
        #[command(flatten)]
        target: Target,
        /// Tenant to load the data under.
        #[arg(long)]
        tenant: String,
        /// The file: `.csv` with a header row, or `.jsonl`.
        #[arg(long)]
        file: PathBuf,
        /// Country of rows without a `country` column (ISO 3166-1 alpha-2).
        #[arg(long, alias = "region")]
        country: String,
        /// The federation trust bundle (`domicile trust bundle`; `domicile dev` prints its
        /// own): each region's sealing key is verified with it before a byte is sealed.
        #[arg(long, env = "DOMICILE_TRUST_BUNDLE")]
        trust_bundle: PathBuf,
    },
    /// The federation trust bundle: region id → identity key, distributed out of band so that
    /// clients can verify the sealing keys the gateway relays.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// The tenant DPO's tools: a signing key, and the requests that need the DPO's signature
    /// (access, portability, erasure, legal holds, incident reports), signed on this machine.
    Dpo {
        #[command(subcommand)]
        command: DpoCommand,
    },
    /// The case queue of subject requests, and the steps of a case: verify the requester's
    /// identity (which fulfils the request), wait for the subject, extend, refuse. Steps are
    /// signed with the DPO key on this machine.
    Requests {
        #[command(subcommand)]
        command: RequestsCommand,
    },
    /// A subject-request receipt, checked offline.
    Request {
        #[command(subcommand)]
        command: RequestCommand,
    },
    /// Generate a region's secrets: the sealing key pair, the key-encryption key, the
    /// pseudonym secret and the audit signing key (each 32 bytes, mode 0600), either where a
    /// node configuration names them (`--config`; with `[kek_pkcs11]` the KEK is made inside
    /// the token) or into a new directory (`--out` and `--region`). Existing keys are never
    /// overwritten. Run it in-country, once; prints the public halves. A node only loads them.
    Keygen {
        /// The node configuration whose key files (and token key) to create.
        #[arg(long, conflicts_with_all = ["out", "region"])]
        config: Option<PathBuf>,
        /// The directory to create them in.
        #[arg(long, requires = "region", required_unless_present = "config")]
        out: Option<PathBuf>,
        /// The region they are for (names the audit key's log).
        #[arg(long)]
        region: Option<String>,
        /// With `--config`: make only a new sealing key (after moving the current one to
        /// `previous_sealing_key_file`, in a sealing-key rotation).
        #[arg(long, requires = "config")]
        sealing_only: bool,
    },
    /// Generate a development PKI for mutual TLS: a CA, the gateway's certificate
    /// (gateway.domicile), one per region (<region>.node.domicile) and a client certificate.
    /// For production, issue the same identities from your own CA.
    Certs {
        /// The directory to write them in.
        #[arg(long)]
        out: PathBuf,
        /// The regions, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        regions: Vec<String>,
        /// The DNS name of the client certificate (for `[[auth.clients]]`).
        #[arg(long, default_value = "client.domicile")]
        client: String,
    },
    /// Exports of personal data (access and portability requests) for the person who asked.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Audit-log commands for a node's operator (run in-country, against the node's files).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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

/// Where to send a client command and how to print its answer.
#[derive(Debug, clap::Args)]
struct Target {
    /// The gateway's address.
    #[arg(long, env = "DOMICILE_GATEWAY", default_value = "127.0.0.1:50051")]
    gateway: SocketAddr,
    /// The bearer token to call it with (`domicile dev` prints one; `domicile token` mints
    /// more). Read from `DOMICILE_TOKEN` when not given, so it stays out of the shell history.
    #[arg(long, env = "DOMICILE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) of a gateway that serves TLS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// `table` for people, `json` for scripts.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

impl Target {
    async fn connect(&self) -> anyhow::Result<domicile::client::Client> {
        let options = domicile::client::ConnectOptions {
            token: self.token.clone(),
            ca_pem: match &self.ca {
                Some(p) => {
                    Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                }
                None => None,
            },
            ..Default::default()
        };
        domicile::client::Client::connect_with(&self.gateway.to_string(), &options).await
    }
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// On a node: print this region's bundle entry (its identity key, from the audit key file)
    /// as a one-region bundle, for the federation's bundle.
    Export {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Days until clients stop trusting the entry (default: no expiry).
        #[arg(long)]
        valid_days: Option<u32>,
    },
    /// Combine regions' exports into one bundle (printed); a region with two keys is an error.
    Bundle {
        /// The exported files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Who signs and where to: the gateway, the DPO's key, the tenant.
#[derive(Debug, clap::Args)]
struct DpoSigner {
    #[command(flatten)]
    target: Target,
    /// The DPO's private key file (`domicile dpo keygen`).
    #[arg(long)]
    dpo_key: PathBuf,
    /// The tenant.
    #[arg(long)]
    tenant: String,
}

#[derive(Debug, Subcommand)]
enum DpoCommand {
    /// Make a DPO signing key: writes the private key (64 hex characters, mode 0600) and prints
    /// the public key and its id, for each region operator's `dpo_keys_file`.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// Print the `dpo_keys_file` entry for this tenant too.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Submit a data-subject request signed with the DPO key; prints the receipts as JSON.
    Request {
        #[command(flatten)]
        signer: DpoSigner,
        /// access, portability, erasure, restriction or objection.
        #[arg(long)]
        kind: String,
        /// The subject's external id.
        #[arg(long)]
        subject: String,
        /// The subject's country (empty: every region is asked).
        #[arg(long, default_value = "")]
        country: String,
        /// Access and portability: the recipient's X25519 public key, 64 hex characters
        /// (`domicile export keygen`). It is inside what the DPO signs.
        #[arg(long)]
        recipient_key: Option<String>,
        /// Objection: the purposes, comma-separated (e.g. marketing,profiling).
        #[arg(long, value_delimiter = ',')]
        purposes: Vec<String>,
        /// Where to write each receipt (protobuf) with its sealed export, for `domicile export
        /// open`: `<dir>/<request id>.receipt`.
        #[arg(long)]
        receipts_dir: Option<PathBuf>,
        /// The requester's identity was verified already, with this method (account_login,
        /// document_check, knowledge_based, in_person, contact_confirmation): the request is
        /// fulfilled at once. Without it, access, portability and erasure wait for
        /// verification.
        #[arg(long, requires_all = ["evidence", "verified_by"])]
        verified: Option<String>,
        /// With --verified: where the evidence is in your systems (a ticket reference; no
        /// personal data).
        #[arg(long)]
        evidence: Option<String>,
        /// With --verified: who verified (an agent or system code).
        #[arg(long)]
        verified_by: Option<String>,
        /// The federation-wide request id ("dsr-" and 32 hex digits): submitting again with
        /// the same id is idempotent in every region.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Place a legal hold on a subject, signed with the DPO key; prints the hold id.
    Hold {
        #[command(flatten)]
        signer: DpoSigner,
        /// The subject's external id.
        #[arg(long)]
        subject: String,
        /// The subject's country.
        #[arg(long)]
        country: String,
        /// Why (a case reference; no personal data).
        #[arg(long)]
        reason: String,
        /// Days until the hold ends by itself.
        #[arg(long)]
        days: u32,
    },
    /// Release a legal hold, signed with the DPO key.
    Release {
        #[command(flatten)]
        signer: DpoSigner,
        /// The hold id.
        #[arg(long)]
        hold_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum RequestsCommand {
    /// The queue: open requests (or those of `--status`) across regions, soonest due first.
    List {
        #[command(flatten)]
        target: Target,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Only these regions (repeat or comma-separate); all by default.
        #[arg(long, value_delimiter = ',')]
        region: Vec<String>,
        /// Only these statuses (received, awaiting_subject, in_progress, partially_completed,
        /// completed, refused); the open ones by default.
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only open requests past their due date.
        #[arg(long)]
        overdue: bool,
        /// Only requests due within this many days.
        #[arg(long, default_value_t = 0)]
        due_within_days: u32,
        /// Receipts per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Follow the pages to the end.
        #[arg(long)]
        all: bool,
    },
    /// One request's receipt and history; `--out` writes the signed receipt (protobuf) for
    /// `domicile request verify`.
    Show {
        #[command(flatten)]
        target: Target,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The request id (`<region>.sr-…`).
        #[arg(long)]
        id: String,
        /// Where to write the receipt.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// An access or portability request's export again (until it expires), streamed, written
    /// with its request id and region as a receipt file for `domicile export open`.
    Fetch {
        #[command(flatten)]
        target: Target,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The request id.
        #[arg(long)]
        id: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// The requester's identity is verified: the request is fulfilled now. Writes the receipt
    /// (with an access or portability request's sealed export) to `--receipts-dir` if given.
    Verify {
        #[command(flatten)]
        signer: DpoSigner,
        /// The request id.
        #[arg(long)]
        id: String,
        /// account_login, document_check, knowledge_based, in_person or contact_confirmation.
        #[arg(long)]
        method: String,
        /// Where the evidence is in your systems (a ticket reference; no personal data).
        #[arg(long)]
        evidence: String,
        /// Who verified (an agent or system code).
        #[arg(long)]
        verified_by: String,
        /// Where to write the receipt, for `domicile export open`.
        #[arg(long)]
        receipts_dir: Option<PathBuf>,
    },
    /// Waiting for the subject (identity evidence, a clarification); pauses the deadline
    /// where the country policy allows.
    Await {
        #[command(flatten)]
        signer: DpoSigner,
        /// The request id.
        #[arg(long)]
        id: String,
        /// What was asked of the subject (no personal data).
        #[arg(long)]
        reason: String,
    },
    /// Extend the deadline by the country policy's extension, once, before it is due.
    Extend {
        #[command(flatten)]
        signer: DpoSigner,
        /// The request id.
        #[arg(long)]
        id: String,
        /// Why, as told to the subject (no personal data).
        #[arg(long)]
        reason: String,
    },
    /// Refuse the request, with the reason told to the subject.
    Refuse {
        #[command(flatten)]
        signer: DpoSigner,
        /// The request id.
        #[arg(long)]
        id: String,
        /// Why (no personal data).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum RequestCommand {
    /// Check a receipt's signature against its region's identity key in the trust bundle,
    /// offline, and print it; fails naming why when it does not verify.
    Verify {
        /// The receipt file (protobuf, from `--receipts-dir` or `requests show --out`).
        receipt: PathBuf,
        /// The federation trust bundle.
        #[arg(long, env = "DOMICILE_TRUST_BUNDLE")]
        trust_bundle: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a gateway configuration, a node configuration (with its countries' policies) or a
    /// country policy file, and report every problem with its path. Exit status 1 when any.
    /// `DOMICILE_NODE_*` and `DOMICILE_GATEWAY_*` overrides apply, as when the file is run.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Apply the country policies' retention now: delete what may no longer be kept (skipping
    /// legal holds) and end expired holds. A serving node also does this every day.
    Sweep {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Bring the node's database to this release's schema (it also happens at start), or with
    /// `--check` only say which migrations are pending.
    Migrate {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Change nothing: print the database's version and the pending migrations.
        #[arg(long)]
        check: bool,
    },
    /// Copy the node's database to a new file with SQLite's online backup API, while it
    /// serves. The key vault is not copied: erasure destroys keys there, so subjects erased
    /// later stay unreadable in this backup.
    Backup {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The backup file to write (must not exist).
        #[arg(long)]
        to: PathBuf,
    },
    /// Re-wrap every subject key under the KEK the configuration names, while the node serves
    /// (its `[previous_kek]` names the old one), in batches that each commit: stopped anywhere,
    /// it resumes where it was. When none is left, the old KEK's check value is removed, so the
    /// old key opens the vault no more; then drop `[previous_kek]` from the configuration.
    RotateKek {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Keys re-wrapped per transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// After restoring a PostgreSQL node's database with pg_restore (node stopped): erase
    /// again every subject erased since the backup was taken (the vault remembers them), and
    /// record the restore in the audit log.
    EraseAgain {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Put a backup back as the node's database, with the node stopped. Subjects erased since
    /// the backup (the vault remembers them) are erased again before it goes into place.
    Restore {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// Replace the existing database (and its write-ahead log).
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ExportCommand {
    /// Make an X25519 key pair to receive an export: writes the private key (32 raw bytes,
    /// mode 0600) and prints the public key in hex for `recipient_public_key`.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Decrypt an export and print its JSON document.
    Open {
        /// The private key file from `domicile export keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The tenant the request was made for.
        #[arg(long)]
        tenant: String,
        /// The receipt (`SubjectRequestReceipt`, protobuf binary) carrying the sealed export.
        #[arg(long)]
        receipt: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the audit log and its signed checkpoints; name the first entry that was modified,
    /// removed, reordered or truncated. Exit status 1 when tampered.
    Verify {
        /// The node's configuration file (for its database, region and audit key).
        #[arg(long)]
        config: PathBuf,
        /// Verify against this audit public key (64 hex characters) instead of the one derived
        /// from the node's key file, e.g. the key the region published.
        #[arg(long)]
        public_key: Option<String>,
        /// A checkpoint obtained earlier, which the log must extend: a JSON checkpoint
        /// (`region_id`, `seq`, `at`, `head_hash`, `signature`, `public_key`, hex for bytes),
        /// or the gateway's `audit_witness_file` (this region's entry is used).
        #[arg(long)]
        trusted_head: Option<PathBuf>,
        /// When the log verifies, write its latest signed checkpoint here (JSON), to keep
        /// apart from the node and pass as `--trusted-head` next time.
        #[arg(long)]
        save_head: Option<PathBuf>,
    },
    /// Records of processing: activities by tenant and purpose, data categories, recipients
    /// (what crossed the border, in aggregate) and the retention the policies apply.
    Report {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// First day included, YYYY-MM-DD (UTC). Default: the beginning.
        #[arg(long)]
        from: Option<String>,
        /// Last day included, YYYY-MM-DD (UTC). Default: today.
        #[arg(long)]
        to: Option<String>,
        /// `json` or `csv`.
        #[arg(long, default_value = "json")]
        format: String,
    },
}

fn init_logging(json: bool, default: &str) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    for cap in domicile_node::store::db::LOG_CAPS {
        filter = filter.add_directive(cap.parse().expect("a valid directive"));
    }
    // Colour codes only for a person at a terminal: a pipe or a file (what Kubernetes and
    // journald collect) gets plain lines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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

/// Re-reads the gateway's configuration file on every SIGHUP and applies it
/// ([`Gateway::reload`]); a file that does not validate is refused and the running
/// configuration stays.
async fn reload_on_hangup(gateway: Gateway, path: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be handled here: configuration reload is off");
            return;
        };
        while hangups.recv().await.is_some() {
            let config = read_config(&path, |t| {
                GatewayConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            });
            let applied = config.and_then(|c| Ok(gateway.reload(c)?));
            match applied {
                Ok(report) => tracing::info!(
                    added = ?report.added,
                    removed = ?report.removed,
                    changed = ?report.changed,
                    restart_needed = ?report.restart_needed,
                    "configuration reloaded"
                ),
                Err(e) => {
                    gateway.metrics().reload_failures.inc();
                    tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (gateway, path);
}

/// A command typed into `domicile dev`: `stop <region>` stops that region's node.
async fn dev_command(federation: &mut domicile::federation::Federation, line: &str) {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        [] => {}
        ["stop", region] if federation.node(region).is_some() => {
            federation.stop_node(region).await;
            println!("stopped region {region}");
        }
        ["stop", region] => println!("no region {region:?}"),
        _ => println!("commands: stop <region>"),
    }
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads.
    domicile_ops::alloc::tune();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
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
            metrics_listen,
            console_listen,
            insecure,
            storage,
        } => {
            init_logging(cli.log_json, "warn");
            let postgres = match storage.as_deref() {
                None => domicile::federation::postgres_from_env()?,
                Some("sqlite") => false,
                Some("postgres") => true,
                Some(other) => anyhow::bail!("--storage {other:?}: expected sqlite or postgres"),
            };
            let opts = DevOptions {
                listen,
                data_dir,
                subjects,
                interactions,
                seed,
                tenant,
                insecure,
                postgres,
            };
            let mut dev = dev::start(&opts).await?;
            if !once {
                let metrics = TcpListener::bind(metrics_listen)
                    .await
                    .with_context(|| format!("binding the metrics listener to {metrics_listen}"))?;
                println!(
                    "\nMetrics: http://{0}/metrics (gateway), http://{0}/metrics/<region> (nodes)",
                    metrics.local_addr()?
                );
                tokio::spawn(domicile_ops::metrics::serve(
                    metrics,
                    dev.federation.metrics_sources(),
                    domicile_ops::metrics::MetricsAccess::open_loopback(),
                    terminated(),
                ));
                let console = TcpListener::bind(console_listen)
                    .await
                    .with_context(|| format!("binding the console to {console_listen}"))?;
                let console_addr = console.local_addr()?;
                match &dev.token {
                    Some(_) => {
                        println!("Console: http://{console_addr}/ (sign in with the token above)")
                    }
                    None => println!(
                        "Console: http://{console_addr}/?tenant={} (--insecure: no sign-in)",
                        opts.tenant
                    ),
                }
                let gateway = dev.federation.gateway.clone();
                tokio::spawn(async move {
                    if let Err(e) =
                        domicile_gateway::api::console::serve(gateway, console, terminated()).await
                    {
                        tracing::error!(error = %e, "console stopped");
                    }
                });
                println!(
                    "Serving; Ctrl-C to stop. Type \"stop <region>\" to stop a region's node and watch the federation degrade."
                );
                // A thread of its own: a blocking read of standard input would hold up the
                // runtime's shutdown, and a detached thread does not.
                let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(8);
                std::thread::spawn(move || {
                    for line in std::io::stdin().lines().map_while(Result::ok) {
                        if tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                });
                let mut stop = std::pin::pin!(terminated());
                loop {
                    tokio::select! {
                        () = &mut stop => break,
                        line = lines.recv() => match line {
                            Some(line) => dev_command(&mut dev.federation, line.trim()).await,
                            // Standard input closed (e.g. /dev/null): serve until stopped.
                            None => {
                                (&mut stop).await;
                                break;
                            }
                        },
                    }
                }
            }
            dev.federation.shutdown().await;
        }
        Command::Gateway { config } => {
            init_logging(cli.log_json, "info");
            let config_path = config.clone();
            let config = read_config(&config, |t| {
                GatewayConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let listener = TcpListener::bind(config.listen).await?;
            let metrics = match config.metrics_listen {
                Some(addr) => Some(TcpListener::bind(addr).await?),
                None => None,
            };
            let console = match config.console_listen {
                Some(addr) => Some(TcpListener::bind(addr).await?),
                None => None,
            };
            let gateway = Gateway::new(config)?;
            if let Some(console) = console {
                // Fail at start, not at the first visit, when [tls] cannot be used.
                domicile_gateway::api::console::tls_acceptor(&gateway.config())?;
                tracing::info!(addr = %console.local_addr()?, "console listening");
                let serving = gateway.clone();
                tokio::spawn(async move {
                    if let Err(e) =
                        domicile_gateway::api::console::serve(serving, console, terminated()).await
                    {
                        tracing::error!(error = %e, "console stopped");
                    }
                });
            }
            tracing::info!(addr = %listener.local_addr()?, "gateway listening");
            if let Some(metrics) = metrics {
                tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
                let sources = [("/metrics".to_owned(), gateway.metrics().source())];
                let access = domicile_ops::metrics::MetricsAccess::load(
                    gateway.config().metrics_access.as_ref(),
                )
                .map_err(anyhow::Error::msg)?;
                tokio::spawn(domicile_ops::metrics::serve(
                    metrics,
                    sources.into(),
                    access,
                    terminated(),
                ));
            }
            tokio::spawn(reload_on_hangup(gateway.clone(), config_path));
            domicile_gateway::serve(gateway, listener, terminated()).await?;
        }
        Command::Node {
            config,
            command: None,
        } => {
            init_logging(cli.log_json, "info");
            let config = config.context("--config is required to run a node")?;
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let listener = TcpListener::bind(config.listen).await?;
            let local = match config.local_listen {
                Some(addr) => Some(TcpListener::bind(addr).await?),
                None => None,
            };
            let metrics = match config.metrics_listen {
                Some(addr) => Some((
                    TcpListener::bind(addr).await?,
                    domicile_ops::metrics::MetricsAccess::load(config.metrics_access.as_ref())
                        .map_err(anyhow::Error::msg)?,
                )),
                None => None,
            };
            let node = Node::open(config)?;
            tracing::info!(addr = %listener.local_addr()?, "node listening");
            if let Some(local) = local {
                tracing::info!(addr = %local.local_addr()?, "in-country listener");
                tokio::spawn(domicile_node::serve_local(
                    node.clone(),
                    local,
                    terminated(),
                ));
            }
            if let Some((metrics, access)) = metrics {
                tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
                let sources = [("/metrics".to_owned(), node.metrics().source())];
                tokio::spawn(domicile_ops::metrics::serve(
                    metrics,
                    sources.into(),
                    access,
                    terminated(),
                ));
            }
            domicile_node::serve(node, listener, terminated()).await?;
        }
        Command::Audit { command } => return audit(command),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let problems = config_check(&file)?;
            if !problems.is_empty() {
                for p in &problems {
                    println!("{}: {p}", file.display());
                }
                std::process::exit(1);
            }
        }
        Command::Regions { target } => {
            let client = target.connect().await?;
            let regions = client.regions().await?;
            if target.output == "json" {
                let rows: Vec<_> = regions
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "region_id": r.region_id,
                            "countries": r.countries,
                            "health": domicile_proto::pb::RegionHealth::try_from(r.health)
                                .map_or("", |h| h.as_str_name()),
                            "sealing_key_id": r.sealing_key.as_ref().map(|k| k.key_id.clone()),
                            "audit_public_key": hex::encode(&r.audit_public_key),
                            "detail": r.detail,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<Vec<String>> = regions
                    .iter()
                    .map(|r| {
                        vec![
                            r.region_id.clone(),
                            r.countries.join(","),
                            domicile_proto::pb::RegionHealth::try_from(r.health)
                                .map(|h| {
                                    h.as_str_name()
                                        .trim_start_matches("REGION_HEALTH_")
                                        .to_lowercase()
                                })
                                .unwrap_or_default(),
                            r.sealing_key
                                .as_ref()
                                .map(|k| k.key_id.clone())
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    domicile::table::render(&["region", "countries", "health", "key id"], &rows)
                );
            }
        }
        Command::Aggregate {
            target,
            tenant,
            group_by,
            epsilon,
        } => {
            use domicile_proto::pb::Dimension;
            let mut dims = Vec::new();
            for g in &group_by {
                dims.push(match g.trim() {
                    "region" => Dimension::Region,
                    "country" => Dimension::Country,
                    "channel" => Dimension::Channel,
                    "month" => Dimension::Month,
                    "day" => Dimension::Day,
                    other => {
                        anyhow::bail!("--group-by {other}: region, country, channel, month or day")
                    }
                } as i32);
            }
            let mut request = domicile::dev::example_request(&tenant);
            if let Some(q) = request.query.as_mut() {
                q.group_by = dims;
                q.epsilon = epsilon;
            }
            let client = target.connect().await?;
            let response = client.gateway().aggregate(request).await?.into_inner();
            if target.output == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&domicile::dev::aggregate_json(&response))?
                );
            } else {
                print!("{}", domicile::dev::render_aggregate(&response));
            }
        }
        Command::Load {
            target,
            tenant,
            file,
            country,
            trust_bundle,
        } => {
            anyhow::ensure!(
                domicile_proto::domain::is_country_code(&country),
                "--country must be an ISO 3166-1 alpha-2 code in upper case, e.g. DE"
            );
            let bundle = domicile_proto::trust::TrustBundle::load(&trust_bundle)?;
            let client = target.connect().await?.with_trust_bundle(bundle);
            let report =
                domicile::load::load(&client, &tenant, &file, &country, target.output == "table")
                    .await?;
            if target.output == "json" {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", domicile::load::render(&report));
            }
        }
        Command::Export { command } => return export(command),
        Command::Trust { command } => return trust(command),
        Command::Dpo { command } => return dpo(command).await,
        Command::Requests { command } => return requests(command).await,
        Command::Request {
            command:
                RequestCommand::Verify {
                    receipt,
                    trust_bundle,
                },
        } => {
            let json = domicile::requests::verify_file(&receipt, &trust_bundle)?;
            println!("receipt verified: signed by region {}", json["region_id"]);
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        Command::Keygen {
            config,
            out,
            region,
            sealing_only,
        } => {
            if sealing_only {
                let path = config.expect("clap requires --config");
                let config = NodeConfig::from_toml(
                    &std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )?;
                let id = domicile_node::store::keys::create_sealing_key(&config)?;
                println!("sealing.key    key id {id}");
                return Ok(());
            }
            return keygen(config.as_deref(), out.as_deref(), region.as_deref());
        }
        Command::Token {
            secret_file,
            tenant,
            operations,
            purposes,
            no_dpo,
            hours,
        } => {
            let secret = std::fs::read(&secret_file)
                .with_context(|| format!("reading {}", secret_file.display()))?;
            let mut claims = domicile::token::TokenClaims::everything(&tenant, hours);
            if !operations.is_empty() {
                claims.operations = operations;
            }
            if !purposes.is_empty() {
                claims.purposes = purposes;
            }
            claims.dpo = !no_dpo;
            println!("{}", domicile::token::mint(secret.trim_ascii(), &claims)?);
        }
        Command::Certs {
            out,
            regions,
            client,
        } => {
            let pki = domicile::certs::generate(&out, &regions, &client)?;
            println!("CA           {}", pki.ca().display());
            for name in std::iter::once("gateway".to_owned())
                .chain(regions.iter().map(|r| format!("node-{r}")))
                .chain(std::iter::once("client".to_owned()))
            {
                let (cert, key) = pki.pair(&name);
                println!("{name:<12} {} {}", cert.display(), key.display());
            }
        }
        Command::Node {
            command: Some(NodeCommand::Sweep { config }),
            ..
        } => {
            init_logging(cli.log_json, "info");
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let node = Node::open(config)?;
            let swept = node.sweep()?;
            println!("{}", serde_json::to_string_pretty(&swept)?);
        }
        Command::Node {
            command: Some(NodeCommand::Migrate { config, check }),
            ..
        } => {
            init_logging(cli.log_json, "info");
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let target = domicile_node::domain::schema::SCHEMA_VERSION;
            let db = config.backend().describe();
            if check {
                match domicile_node::store::schema_version(&config.backend())? {
                    None => {
                        println!("{db}: no database yet; it will be created at schema {target}")
                    }
                    Some(v) => {
                        let pending = domicile_node::domain::schema::pending_migrations(v)?;
                        if pending.is_empty() {
                            println!("{db}: schema {v}, up to date");
                        } else {
                            println!("{db}: schema {v}; pending:");
                            for m in pending {
                                println!("  {} -> {}: {}", m.version - 1, m.version, m.what);
                            }
                        }
                    }
                }
            } else {
                match domicile_node::node::migrate(&config)? {
                    None => println!("{db}: created at schema {target}"),
                    Some(v) if v == target => println!("{db}: schema {v}, up to date"),
                    Some(v) => println!("{db}: migrated from schema {v} to {target}"),
                }
            }
        }
        Command::Node {
            command: Some(NodeCommand::Backup { config, to }),
            ..
        } => {
            init_logging(cli.log_json, "warn");
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let report = domicile_node::node::backup::backup(&config, &to)?;
            println!(
                "backed up {} to {} ({} bytes); the key vault is not in it",
                config.database.display(),
                report.path.display(),
                report.bytes
            );
        }
        Command::Node {
            command:
                Some(NodeCommand::Restore {
                    config,
                    from,
                    replace,
                }),
            ..
        } => {
            init_logging(cli.log_json, "warn");
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let report = domicile_node::node::backup::restore(&config, &from, replace)?;
            println!(
                "restored {} from {}: {} subjects, {} erased since the backup and erased again",
                config.database.display(),
                from.display(),
                report.subjects,
                report.erased_again
            );
        }
        Command::Node {
            command: Some(NodeCommand::EraseAgain { config }),
            ..
        } => {
            init_logging(cli.log_json, "warn");
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let report = domicile_node::node::backup::erase_again(&config)?;
            println!(
                "{}: {} subjects, {} erased since the backup and erased again",
                config.backend().describe(),
                report.subjects,
                report.erased_again
            );
        }
        Command::Node {
            command: Some(NodeCommand::RotateKek { config, batch }),
            ..
        } => {
            init_logging(cli.log_json, "warn");
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            anyhow::ensure!(batch > 0, "--batch: must be at least 1");
            let vault = domicile_node::store::vault::Vault::open_for(&config)?;
            let mut total = 0;
            loop {
                let n = vault.rewrap(batch)?;
                if n == 0 {
                    break;
                }
                total += n;
                eprintln!("re-wrapped {total}, {} left", vault.to_rewrap()?);
            }
            let retired = vault.retire_other_keks()?;
            println!(
                "{total} subject keys re-wrapped; {retired} old KEK check value(s) removed: \
                 every key is under the configured KEK (remove [previous_kek] now)"
            );
        }
        Command::Redact {
            country,
            name,
            stats,
        } => redact(&country, &name, stats)?,
    }
    Ok(())
}

/// Unix seconds of 00:00 UTC on a "YYYY-MM-DD" day.
fn day_start(day: &str) -> anyhow::Result<i64> {
    domicile::load::parse_time(&format!("{day}T00:00:00Z"))
        .filter(|_| day.len() == 10)
        .with_context(|| format!("{day:?}: expected YYYY-MM-DD"))
}

/// Every problem of a configuration or policy file, as "path: message" lines; prints what the
/// file is when it is fine.
fn config_check(file: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => return Ok(vec![format!("not valid TOML: {}", e.message())]),
    };
    if table.contains_key("region_id") {
        let config = match NodeConfig::parse_with_env(&text, |k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => return Ok(vec![e.to_string().trim().to_owned()]),
        };
        let mut problems: Vec<String> = config.problems().iter().map(ToString::to_string).collect();
        if problems.is_empty() {
            match domicile_node::domain::policy::PolicySet::load(
                config.policy_dir.as_deref(),
                &config.countries,
            ) {
                Ok(set) => println!(
                    "{}: node {} for {} under {}: ok",
                    file.display(),
                    config.region_id,
                    config.countries.join(", "),
                    set.labels().join(", ")
                ),
                Err(e) => problems.push(format!("policy_dir: {e}")),
            }
        }
        Ok(problems)
    } else if table.contains_key("regions") {
        let config = match GatewayConfig::parse_with_env(&text, |k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => return Ok(vec![e.to_string().trim().to_owned()]),
        };
        let problems: Vec<String> = config.problems().iter().map(ToString::to_string).collect();
        if problems.is_empty() {
            println!(
                "{}: gateway with {} regions: ok",
                file.display(),
                config.regions.len()
            );
        }
        Ok(problems)
    } else if table.contains_key("border") {
        let country = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        match domicile_node::domain::policy::CountryPolicy::parse(&text, file, &country) {
            Ok(p) => {
                println!("{}: policy {}: ok", file.display(), p.label());
                Ok(Vec::new())
            }
            Err(e) => Ok(vec![format!(
                "{}{}: {}",
                e.line.map_or_else(String::new, |l| format!("line {l}: ")),
                e.field,
                e.message.trim()
            )]),
        }
    } else {
        Ok(vec![
            "neither a node configuration (region_id), a gateway configuration (regions) nor a country policy (border)".into(),
        ])
    }
}

/// `domicile export …`.
fn trust(command: TrustCommand) -> anyhow::Result<()> {
    match command {
        TrustCommand::Export { config, valid_days } => {
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let expires =
                valid_days.map(|d| domicile_proto::domain::unix_now() + i64::from(d) * 86_400);
            let bundle =
                domicile::trust::export(&config.region_id, &config.audit_key_path(), expires)?;
            println!("{}", bundle.to_json());
        }
        TrustCommand::Bundle { files } => {
            let parts = files
                .iter()
                .map(|f| domicile_proto::trust::TrustBundle::load(f))
                .collect::<Result<Vec<_>, _>>()?;
            println!("{}", domicile::trust::combine(&parts)?.to_json());
        }
    }
    Ok(())
}

async fn requests(command: RequestsCommand) -> anyhow::Result<()> {
    use domicile::requests::{action, receipt_json, table};
    match command {
        RequestsCommand::List {
            target,
            tenant,
            region,
            status,
            overdue,
            due_within_days,
            page_size,
            all,
        } => {
            let statuses = status
                .iter()
                .map(|s| domicile::requests::parse_status(s).map(|s| s as i32))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut gw = target.connect().await?.gateway();
            let mut token = String::new();
            let mut receipts = Vec::new();
            let mut counts = Vec::new();
            let mut coverage = Vec::new();
            loop {
                let page = gw
                    .list_subject_requests(domicile_proto::pb::ListSubjectRequestsRequest {
                        tenant_id: tenant.clone(),
                        regions: region.clone(),
                        statuses: statuses.clone(),
                        overdue_only: overdue,
                        due_within_days,
                        page_size,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                receipts.extend(page.receipts);
                if counts.is_empty() {
                    counts = page.counts;
                    coverage = page.coverage;
                }
                token = page.next_page_token;
                if token.is_empty() || !all {
                    break;
                }
            }
            if target.output == "json" {
                let json = serde_json::json!({
                    "receipts": receipts.iter().map(receipt_json).collect::<Vec<_>>(),
                    "counts": counts.iter().map(|c| serde_json::json!({
                        "region_id": c.region_id,
                        "open": c.open,
                        "due_within_7_days": c.due_within_7_days,
                        "overdue": c.overdue,
                    })).collect::<Vec<_>>(),
                    "next_page_token": token,
                });
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print!("{}", table(&receipts));
                for c in &counts {
                    println!(
                        "{}: {} open, {} due within 7 days, {} overdue",
                        c.region_id, c.open, c.due_within_7_days, c.overdue
                    );
                }
                for c in coverage
                    .iter()
                    .filter(|c| c.status != domicile_proto::pb::RegionStatus::Ok as i32)
                {
                    println!("{}: did not answer ({})", c.region_id, c.detail);
                }
                if !token.is_empty() {
                    println!("more: --all for every page");
                }
            }
        }
        RequestsCommand::Show {
            target,
            tenant,
            id,
            out,
        } => {
            let receipt = target
                .connect()
                .await?
                .gateway()
                .get_subject_request(domicile_proto::pb::GetSubjectRequestRequest {
                    tenant_id: tenant,
                    request_id: id,
                })
                .await?
                .into_inner()
                .receipt
                .context("the gateway answered no receipt")?;
            if let Some(path) = out {
                std::fs::write(&path, prost::Message::encode_to_vec(&receipt))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{}", serde_json::to_string_pretty(&receipt_json(&receipt))?);
        }
        RequestsCommand::Fetch {
            target,
            tenant,
            id,
            out,
        } => {
            let region_id = domicile_proto::rights::region_of_id(&id, "sr", "--id")
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut stream = target
                .connect()
                .await?
                .gateway()
                .fetch_subject_request_export(
                    domicile_proto::pb::FetchSubjectRequestExportRequest {
                        tenant_id: tenant,
                        request_id: id.clone(),
                    },
                )
                .await?
                .into_inner();
            let mut export = domicile_proto::pb::SealedExport::default();
            let (mut expected, mut expires) = (0, None);
            while let Some(m) = stream.message().await? {
                if export.encapsulated_key.is_empty() {
                    export.encapsulated_key = m.encapsulated_key;
                    export.schema = m.schema;
                    expected = m.total_bytes;
                    expires = m.expires_at.map(|t| t.seconds);
                }
                export.ciphertext.extend_from_slice(&m.chunk);
            }
            anyhow::ensure!(
                export.ciphertext.len() as u64 == expected,
                "the export was cut short: {} of {expected} bytes",
                export.ciphertext.len()
            );
            let bytes = export.ciphertext.len();
            let receipt = domicile_proto::pb::SubjectRequestReceipt {
                request_id: id,
                region_id,
                export: Some(export),
                ..Default::default()
            };
            std::fs::write(&out, prost::Message::encode_to_vec(&receipt))
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{}",
                serde_json::json!({ "export_bytes": bytes, "expires_at": expires, "out": out })
            );
        }
        RequestsCommand::Verify {
            signer,
            id,
            method,
            evidence,
            verified_by,
            receipts_dir,
        } => {
            let step = action("verify", None, Some((method, evidence, verified_by)))?;
            case_step(signer, id, step, receipts_dir).await?;
        }
        RequestsCommand::Await { signer, id, reason } => {
            case_step(signer, id, action("await", Some(reason), None)?, None).await?;
        }
        RequestsCommand::Extend { signer, id, reason } => {
            case_step(signer, id, action("extend", Some(reason), None)?, None).await?;
        }
        RequestsCommand::Refuse { signer, id, reason } => {
            case_step(signer, id, action("refuse", Some(reason), None)?, None).await?;
        }
    }
    Ok(())
}

/// Signs one step of a request's case with the DPO key, sends it, prints the receipt after it
/// (and writes it to `receipts_dir` when given).
async fn case_step(
    signer: DpoSigner,
    id: String,
    step: domicile_proto::pb::update_subject_request_request::Action,
    receipts_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    use domicile_proto::{domain::unix_now, trust::sign_request};
    let key =
        domicile_proto::trust::read_signing_key(&signer.dpo_key).map_err(|e| anyhow::anyhow!(e))?;
    let mut request = domicile_proto::pb::UpdateSubjectRequestRequest {
        tenant_id: signer.tenant,
        request_id: id,
        action: Some(step),
        actor: "cli:dpo".into(),
        dpo_signature: None,
    };
    sign_request(&mut request, &key, unix_now());
    let receipt = signer
        .target
        .connect()
        .await?
        .gateway()
        .update_subject_request(request)
        .await?
        .into_inner()
        .receipt
        .context("the gateway answered no receipt")?;
    if let Some(dir) = receipts_dir {
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.receipt", receipt.request_id));
        std::fs::write(&path, prost::Message::encode_to_vec(&receipt))?;
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&domicile::requests::receipt_json(&receipt))?
    );
    Ok(())
}

async fn dpo(command: DpoCommand) -> anyhow::Result<()> {
    use domicile_proto::{
        domain::{unix_now, whole_seconds},
        pb::{PlaceLegalHoldRequest, ReleaseLegalHoldRequest, SubjectRef, SubjectRequestKind},
        trust::{read_signing_key, sign_request},
    };
    let key_of = |path: &std::path::Path| read_signing_key(path).map_err(|e| anyhow::anyhow!(e));
    match command {
        DpoCommand::Keygen { out, tenant } => {
            let (key, public, id) = domicile::trust::dpo_keygen(&out)?;
            println!(
                "DPO key {} written; public key {public} (key id {id})",
                out.display()
            );
            if let Some(t) = tenant {
                println!(
                    "\nFor each region's dpo_keys_file:\n{}",
                    domicile::trust::dpo_keys_toml(&key, &[t], "DPO")
                );
            }
        }
        DpoCommand::Request {
            signer:
                DpoSigner {
                    target,
                    dpo_key,
                    tenant,
                },
            kind,
            subject,
            country,
            recipient_key,
            purposes,
            receipts_dir,
            verified,
            evidence,
            verified_by,
            request_id,
        } => {
            let key = key_of(&dpo_key)?;
            let verification = match verified {
                Some(method) => Some(domicile_proto::pb::IdentityVerification {
                    method: domicile_proto::pb::VerificationMethod::from_str_name(&format!(
                        "VERIFICATION_METHOD_{}",
                        method.to_ascii_uppercase()
                    ))
                    .filter(|m| *m != domicile_proto::pb::VerificationMethod::Unspecified)
                    .context(
                        "--verified: account_login, document_check, knowledge_based, in_person \
                         or contact_confirmation",
                    )? as i32,
                    evidence_reference: evidence.unwrap_or_default(),
                    verified_by: verified_by.unwrap_or_default(),
                    verified_at: None,
                }),
                None => None,
            };
            let kind = SubjectRequestKind::from_str_name(&format!(
                "SUBJECT_REQUEST_KIND_{}",
                kind.to_ascii_uppercase()
            ))
            .filter(|k| {
                *k != SubjectRequestKind::Rectification && *k != SubjectRequestKind::Unspecified
            })
            .context("--kind: access, portability, erasure, restriction or objection")?;
            let recipient_public_key = match recipient_key {
                Some(h) => hex::decode(h.trim()).context("--recipient-key: expected hex")?,
                None => Vec::new(),
            };
            let purposes = purposes
                .iter()
                .map(|p| {
                    domicile_gateway::auth::parse_purpose(p)
                        .map(|p| p as i32)
                        .with_context(|| format!("--purposes: unknown purpose {p:?}"))
                })
                .collect::<anyhow::Result<_>>()?;
            let mut request = domicile_proto::pb::SubmitSubjectRequestRequest {
                verification,
                request_id,
                tenant_id: tenant,
                subject: Some(SubjectRef {
                    external_id: subject,
                    country,
                }),
                kind: kind as i32,
                recipient_public_key,
                purposes,
                actor: "cli:dpo".into(),
                ..Default::default()
            };
            sign_request(&mut request, &key, unix_now());
            let answer = target
                .connect()
                .await?
                .gateway()
                .submit_subject_request(request)
                .await?
                .into_inner();
            for r in &answer.receipts {
                if let Some(dir) = &receipts_dir {
                    std::fs::create_dir_all(dir)?;
                    let path = dir.join(format!("{}.receipt", r.request_id));
                    std::fs::write(&path, prost::Message::encode_to_vec(r))?;
                }
                println!(
                    "{}",
                    serde_json::json!({
                        "request_id": r.request_id,
                        "region_id": r.region_id,
                        "status": domicile_proto::pb::SubjectRequestStatus::try_from(r.status)
                            .map(|s| s.as_str_name()).unwrap_or("UNKNOWN"),
                        "due_at": r.due_at.as_ref().map(|t| t.seconds),
                        "sealed_export": r.export.is_some(),
                    })
                );
            }
        }
        DpoCommand::Hold {
            signer:
                DpoSigner {
                    target,
                    dpo_key,
                    tenant,
                },
            subject,
            country,
            reason,
            days,
        } => {
            let key = key_of(&dpo_key)?;
            let now = unix_now();
            let mut request = PlaceLegalHoldRequest {
                tenant_id: tenant,
                subject: Some(SubjectRef {
                    external_id: subject,
                    country,
                }),
                reason,
                interactions: None,
                expires_at: Some(whole_seconds(now + i64::from(days) * 86_400)),
                dpo_signature: None,
            };
            sign_request(&mut request, &key, now);
            let answer = target
                .connect()
                .await?
                .gateway()
                .place_legal_hold(request)
                .await?
                .into_inner();
            println!("{}", answer.hold_id);
        }
        DpoCommand::Release {
            signer:
                DpoSigner {
                    target,
                    dpo_key,
                    tenant,
                },
            hold_id,
        } => {
            let key = key_of(&dpo_key)?;
            let mut request = ReleaseLegalHoldRequest {
                tenant_id: tenant,
                hold_id,
                dpo_signature: None,
            };
            sign_request(&mut request, &key, unix_now());
            let answer = target
                .connect()
                .await?
                .gateway()
                .release_legal_hold(request)
                .await?
                .into_inner();
            println!("erasure completed: {}", answer.erasure_completed);
        }
    }
    Ok(())
}

fn export(command: ExportCommand) -> anyhow::Result<()> {
    use domicile_proto::seal::{SealingKeyPair, open_export};
    match command {
        ExportCommand::Keygen { out } => {
            let keys = SealingKeyPair::generate();
            domicile::certs::write_private(&out, &keys.private_bytes())?;
            println!("{}", hex::encode(keys.public().as_bytes()));
            Ok(())
        }
        ExportCommand::Open {
            key,
            tenant,
            receipt,
        } => {
            use prost::Message;
            let keys = SealingKeyPair::from_private_bytes(
                &std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            let bytes = std::fs::read(&receipt)
                .with_context(|| format!("reading {}", receipt.display()))?;
            let receipt = domicile_proto::pb::SubjectRequestReceipt::decode(bytes.as_slice())
                .context("the receipt is not a SubjectRequestReceipt (protobuf binary)")?;
            let sealed = receipt
                .export
                .context("the receipt carries no export (only access and portability do)")?;
            let json = open_export(
                &keys,
                &tenant,
                &receipt.region_id,
                receipt.request_id.as_bytes(),
                &sealed.encapsulated_key,
                &sealed.ciphertext,
            )
            .map_err(|e| anyhow::anyhow!("the export does not open with this key: {e}"))?;
            let doc: serde_json::Value = serde_json::from_slice(&json)?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
    }
}

/// A trusted head from a checkpoint JSON file (`audit verify --save-head`) or a gateway's
/// witness file.
fn trusted_head_of(
    path: &std::path::Path,
    region: &str,
) -> anyhow::Result<domicile_proto::pb::AuditCheckpoint> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let entry = match json.get("regions") {
        Some(regions) => regions
            .get(region)
            .with_context(|| format!("{}: no witnessed head for region {region}", path.display()))?
            .clone(),
        None => json,
    };
    let field = |name: &str| {
        entry
            .get(name)
            .with_context(|| format!("--trusted-head: {name} is missing"))
    };
    let bytes = |name: &str| -> anyhow::Result<Vec<u8>> {
        hex::decode(field(name)?.as_str().unwrap_or_default())
            .with_context(|| format!("--trusted-head: {name}: expected hex"))
    };
    Ok(domicile_proto::pb::AuditCheckpoint {
        region_id: entry
            .get("region_id")
            .and_then(|r| r.as_str())
            .unwrap_or(region)
            .to_owned(),
        seq: field("seq")?.as_u64().context("--trusted-head: seq")?,
        at: Some(domicile_proto::domain::whole_seconds(
            field("at")?.as_i64().context("--trusted-head: at")?,
        )),
        head_hash: bytes("head_hash")?,
        signature: bytes("signature")?,
        public_key: bytes("public_key")?,
    })
}

/// A checkpoint as the JSON that [`trusted_head_of`] reads.
fn head_json(c: &domicile_proto::pb::AuditCheckpoint) -> serde_json::Value {
    serde_json::json!({
        "region_id": c.region_id,
        "seq": c.seq,
        "at": c.at.as_ref().map_or(0, |a| a.seconds),
        "head_hash": hex::encode(&c.head_hash),
        "signature": hex::encode(&c.signature),
        "public_key": hex::encode(&c.public_key),
    })
}

/// `domicile keygen`: a region's secrets, created fresh (never overwriting), where `config`
/// names them or in the directory `out`.
fn keygen(
    config: Option<&std::path::Path>,
    out: Option<&std::path::Path>,
    region: Option<&str>,
) -> anyhow::Result<()> {
    let config = match (config, out, region) {
        (Some(path), _, _) => NodeConfig::from_toml(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        (None, Some(out), Some(region)) => {
            let mut config = NodeConfig::new(region, &["ZZ"], out.join("data.sqlite"));
            config.sealing_key_file = Some(out.join("sealing.key"));
            config.pseudonym_secret_file = Some(out.join("pseudonym.key"));
            config.audit_key_file = Some(out.join("audit.key"));
            config.kek_file = Some(out.join("kek"));
            anyhow::ensure!(
                !out.join("kek.hex").exists(),
                "{} exists: refusing to overwrite a key",
                out.join("kek.hex").display()
            );
            config
        }
        _ => anyhow::bail!("keygen: give --config, or --out and --region"),
    };
    if let Some(token) = &config.kek_pkcs11 {
        domicile_node::store::kek::create_token_key(token)?;
        println!(
            "kek            in token {:?}, key {:?} (sensitive, not extractable)",
            token.token_label, token.key_label
        );
    }
    let created = domicile_node::store::keys::create_region_keys(&config)?;
    if let (Some(out), Some(kek)) = (out, created.kek) {
        domicile::certs::write_private(&out.join("kek.hex"), hex::encode(kek).as_bytes())?;
        println!("kek, kek.hex   (back up apart from the key vault; kek_env takes kek.hex)");
    } else if created.kek.is_some() {
        println!("kek            {}", config.kek_path().display());
    }
    println!("sealing.key    key id {}", created.sealing_key_id);
    println!(
        "               public {}",
        hex::encode(created.sealing_public)
    );
    println!(
        "audit.key      public {}  (verifies checkpoints and releases)",
        hex::encode(created.audit_public)
    );
    println!("pseudonym.key  (never leaves the region)");
    Ok(())
}

/// `domicile audit …`.
fn audit(command: AuditCommand) -> anyhow::Result<()> {
    use domicile_node::domain::audit;
    match command {
        AuditCommand::Verify {
            config,
            public_key,
            trusted_head,
            save_head,
        } => {
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let key: [u8; 32] = match public_key {
                Some(hex_key) => hex::decode(hex_key.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .context("--public-key: expected 64 hex characters")?,
                None => {
                    let seed = std::fs::read(config.audit_key_path()).with_context(|| {
                        format!("reading {}", config.audit_key_path().display())
                    })?;
                    let seed: [u8; 32] = seed
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("the audit key file must hold 32 bytes"))?;
                    domicile_node::store::keys::public_key_of(&seed)
                }
            };
            let trusted = match &trusted_head {
                Some(path) => Some(trusted_head_of(path, &config.region_id)?),
                None => None,
            };
            let conn = audit::open_read_only(&config.backend())?;
            let verdict =
                audit::verify(&conn, &config.region_id, &key)?.and_then(|v| match &trusted {
                    Some(t) => audit::extends(&v, t, &config.region_id, &key).map(|()| v),
                    None => Ok(v),
                });
            match verdict {
                Ok(v) => {
                    if let Some(t) = &trusted {
                        println!(
                            "extends the trusted head: entry {} signed at {}",
                            t.seq,
                            t.at.as_ref().map_or(0, |a| a.seconds)
                        );
                    }
                    println!(
                        "audit log of {} intact: {} entries, {} signed checkpoints, head {}",
                        config.region_id,
                        v.entries,
                        v.checkpoints,
                        hex::encode(v.head)
                    );
                    if let (Some(path), Some(latest)) = (&save_head, &v.latest) {
                        std::fs::write(
                            path,
                            serde_json::to_string_pretty(&head_json(latest))? + "\n",
                        )
                        .with_context(|| format!("writing {}", path.display()))?;
                        println!(
                            "trusted head saved: entry {} in {}",
                            latest.seq,
                            path.display()
                        );
                    }
                    Ok(())
                }
                Err(t) => {
                    println!("audit log of {} TAMPERED: {t}", config.region_id);
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Report {
            config,
            from,
            to,
            format,
        } => {
            let config = read_config(&config, |t| {
                NodeConfig::from_toml_with_env(t, |k| std::env::var(k).ok())
            })?;
            let from_ts = from.as_deref().map(day_start).transpose()?.unwrap_or(0);
            let to_ts = match to.as_deref() {
                Some(day) => day_start(day)? + 86_400,
                None => i64::MAX,
            };
            let conn = audit::open_read_only(&config.backend())?;
            let activities = audit::activities(&conn, from_ts, to_ts)?;
            let policies = domicile_node::domain::policy::PolicySet::load(
                config.policy_dir.as_deref(),
                &config.countries,
            )?;
            match format.as_str() {
                "csv" => print!("{}", audit::activities_csv(&activities)),
                "json" => {
                    let retention: Vec<_> = policies
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "country": p.country(),
                                "policy": p.label(),
                                "profiles_days": p.retention.profiles,
                                "interactions_days": p.retention.interactions,
                                "comments_days": p.retention.comments,
                                "recordings_days": p.retention.recordings,
                                "consent_ledger_days": p.retention.consent_ledger,
                            })
                        })
                        .collect();
                    let report = serde_json::json!({
                        "region": config.region_id,
                        "countries": config.countries,
                        "from": from,
                        "to": to,
                        "activities": activities,
                        "retention": retention,
                    });
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                other => anyhow::bail!("--format {other}: expected json or csv"),
            }
            Ok(())
        }
    }
}

/// `domicile redact`: standard input to standard output, one line at a time.
fn redact(country: &str, names: &[String], stats: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    anyhow::ensure!(
        domicile_proto::domain::is_country_code(country),
        "--country must be an ISO 3166-1 alpha-2 code in upper case, e.g. DE"
    );
    let redactor = domicile_node::privacy::redact::Redactor::for_country(country);
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
