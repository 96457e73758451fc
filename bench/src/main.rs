//! `ledgerline-bench`: every performance figure of the issues, each against
//! a baseline measured in the same run. Ledger appends against plain inserts,
//! sealing against reading the hashes, Merkle hashing against raw SHA-256;
//! Lambda cold start of the function binaries against a hello-world
//! `lambda_http` (built in the same run); the local server's throughput on
//! `/api/me` against `/health`; message delivery against raw signed POSTs and
//! `POST /v1/messages` against `/health`. Prints one JSON object on stdout;
//! progress goes to stderr.

mod coldstart;
mod fresh_db;
mod ledger;
mod messages;
mod runtime_api;
mod stats;
mod throughput;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use coldstart::{Runs, Target};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Set before the runtime starts so `Config::from_env` sees it; far above
/// what a 10 s run can send, and below i32::MAX (the counter's SQL type).
const BENCH_RATE_LIMIT: &str = "1000000000";

/// The functions measured by default: two public routes and one
/// authenticated route whose 401 path goes through the database.
const DEFAULT_FUNCTIONS: [&str; 3] = ["api_health", "api_openapi", "api_me"];

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EventSet {
    /// api_health, api_openapi and api_me, with api_me's key replaced by a
    /// well-formed unknown key (a 401 after a database lookup).
    Default,
    /// Every api_* binary in functions/src/bin with its events/<name>.json,
    /// placeholders left as-is.
    All,
}

#[derive(Parser)]
#[command(
    name = "ledgerline-bench",
    version,
    about = "Ledger, cold start, throughput and message delivery figures against same-run baselines; prints JSON"
)]
struct Args {
    /// Postgres server to use: a private database is created on it, migrated,
    /// used by both benchmarks and dropped.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Cold starts measured per binary.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Unmeasured cold starts per binary before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup_runs: usize,
    /// Which functions and events to measure.
    #[arg(long, value_enum, default_value = "default")]
    events: EventSet,
    /// Measure only these functions (repeatable); overrides the set's list.
    #[arg(long = "function", value_name = "NAME")]
    functions: Vec<String>,
    /// A cold start that has not answered after this many seconds fails.
    #[arg(long, default_value_t = 10.0)]
    cold_start_timeout: f64,
    /// Throughput: seconds per endpoint.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Throughput: unmeasured seconds per endpoint first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Throughput: requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Throughput: at most this many requests per endpoint.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// Cold-start target: function median ≤ this × hello median.
    #[arg(long, default_value_t = 1.5)]
    target_ratio: f64,
    /// Where the function binaries and bench-hello are (default: next to
    /// this binary, i.e. target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The repository (for events/ and functions/src/bin).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    repo: PathBuf,
    /// Skip the ledger figures (appends, sealing, Merkle hashing).
    #[arg(long)]
    skip_ledger: bool,
    /// Ledger: concurrent writers appending to one organisation.
    #[arg(long, default_value_t = 8)]
    ledger_writers: usize,
    /// Ledger: seconds per measured append phase.
    #[arg(long, default_value_t = 5.0)]
    ledger_duration: f64,
    /// Ledger: measured phases per kind (ledger appends, plain inserts).
    #[arg(long, default_value_t = 2)]
    ledger_rounds: usize,
    /// Ledger: events in the sealed day.
    #[arg(long, default_value_t = 1_000_000)]
    seal_events: u64,
    /// Ledger: read/seal pairs measured.
    #[arg(long, default_value_t = 3)]
    seal_runs: usize,
    /// Ledger: leaves of the Merkle hashing figure.
    #[arg(long, default_value_t = 1_000_000)]
    merkle_leaves: usize,
    #[arg(long)]
    skip_cold_start: bool,
    #[arg(long)]
    skip_throughput: bool,
    /// Skip the message delivery figures (worker vs raw signed POSTs, and
    /// POST /v1/messages vs GET /health).
    #[arg(long)]
    skip_messages: bool,
    /// Messages: how many the worker (and the raw signed POSTs) deliver.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Messages: the worker's batch size (its concurrency), and the raw
    /// signed POSTs' concurrency.
    #[arg(long, default_value_t = 10)]
    worker_batch_size: usize,
    /// Messages: also compare against a receiver that answers after this
    /// many milliseconds (0 skips it).
    #[arg(long, default_value_t = 20)]
    receiver_latency_ms: u64,
    /// Keep the bench database instead of dropping it.
    #[arg(long)]
    keep_db: bool,
    /// Let function processes log to this stderr (RUST_LOG is passed on).
    #[arg(long)]
    child_logs: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread exists: the limiter must admit every bench request.
    std::env::set_var("LEDGERLINE_API_RATE_LIMIT", BENCH_RATE_LIMIT);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("--{name} must be a non-negative number of seconds"))
}

async fn run(args: Args) -> anyhow::Result<Value> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .to_path_buf(),
    };
    let repo = args
        .repo
        .canonicalize()
        .unwrap_or_else(|_| args.repo.clone());

    // Resolve everything that can be wrong before touching the database.
    let targets = if args.skip_cold_start {
        Vec::new()
    } else {
        cold_start_targets(&args, &bin_dir, &repo)?
    };

    eprintln!("bench: creating a private database");
    let db = fresh_db::FreshDb::create(&args.database_url).await?;
    eprintln!("bench: database {} ready (migrated, one org key)", db.name);
    // First, while this process is small (the seal's peak RSS is measured
    // in-process).
    let ledger = if args.skip_ledger {
        Ok(json!({"skipped": true}))
    } else {
        ledger_figures(&args, &db.url).await
    };
    let result = match &ledger {
        Ok(_) => measure(&args, &targets, &db).await,
        Err(_) => Ok((json!({"skipped": true}), json!({"skipped": true}))),
    };
    let messages = match (&result, args.skip_messages) {
        (Err(_), _) | (_, true) => Ok(json!({"skipped": true})),
        _ => message_figures(&args, &db.url).await,
    };
    if args.keep_db {
        eprintln!("bench: keeping database {}", db.name);
    } else {
        db.drop_database().await;
    }
    let ledger = ledger?;
    let (cold, throughput) = result?;
    let messages = messages?;

    let all_met = cold.get("all_targets_met").cloned().unwrap_or(Value::Null);
    let throughput_errors: u64 = ["health", "me"]
        .iter()
        .filter_map(|e| {
            throughput
                .pointer(&format!("/endpoints/{e}/errors"))
                .and_then(Value::as_u64)
        })
        .sum();
    Ok(json!({
        "tool": "ledgerline-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "host": {
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "database": {
            "name": db.name,
            "kept": args.keep_db,
            "note": "created on DATABASE_URL's server, migrated with ledgerline::db::migrate, one org and org key; used by every benchmark (each section adds its own organisations)",
        },
        "summary": {
            "ledger_append_over_plain_insert": ledger.pointer("/append/ledger_over_plain").cloned().unwrap_or(Value::Null),
            "ledger_append_target_met": ledger.pointer("/append/target_met").cloned().unwrap_or(Value::Null),
            "ledger_chain_ceiling_not_durable_over_plain_insert": ledger.pointer("/append/chain_ceiling_over_plain").cloned().unwrap_or(Value::Null),
            "ledger_chain_ceiling_durable_over_plain_insert": ledger.pointer("/append/chain_ceiling_durable_over_plain").cloned().unwrap_or(Value::Null),
            "ledger_batched_sequencing_over_plain_insert": ledger.pointer("/append/batched_sequencing_over_plain").cloned().unwrap_or(Value::Null),
            "seal_over_read": ledger.pointer("/seal/seal_over_read").cloned().unwrap_or(Value::Null),
            "seal_peak_rss_mb": ledger.pointer("/seal/peak_rss_mb").cloned().unwrap_or(Value::Null),
            "seal_target_met": ledger.pointer("/seal/target_met").cloned().unwrap_or(Value::Null),
            "merkle_speed_vs_raw_sha256": ledger.pointer("/merkle/tree_speed_vs_raw").cloned().unwrap_or(Value::Null),
            "merkle_target_met": ledger.pointer("/merkle/target_met").cloned().unwrap_or(Value::Null),
            "cold_start_all_targets_met": all_met,
            "throughput_me_over_health_requests_per_s": throughput.pointer("/me_over_health/requests_per_s").cloned().unwrap_or(Value::Null),
            "throughput_errors": throughput_errors,
            "messages_worker_over_raw": messages.pointer("/delivery/worker_over_raw").cloned().unwrap_or(Value::Null),
            "messages_worker_target_met": messages.pointer("/delivery/target_met").cloned().unwrap_or(Value::Null),
            "messages_worker_over_raw_slow_receiver": messages.pointer("/delivery_slow_receiver/worker_over_raw").cloned().unwrap_or(Value::Null),
            "messages_send_over_health_requests_per_s": messages.pointer("/post_messages_vs_health/send_over_health/requests_per_s").cloned().unwrap_or(Value::Null),
        },
        "ledger": ledger,
        "cold_start": cold,
        "throughput": throughput,
        "messages": messages,
    }))
}

async fn ledger_figures(args: &Args, database_url: &str) -> anyhow::Result<Value> {
    let settings = ledger::Settings {
        writers: args.ledger_writers,
        append_duration: seconds("ledger-duration", args.ledger_duration)?,
        append_rounds: args.ledger_rounds,
        seal_events: args.seal_events,
        seal_runs: args.seal_runs,
        merkle_leaves: args.merkle_leaves.max(1),
    };
    ledger::run(database_url, &settings).await
}

async fn message_figures(args: &Args, database_url: &str) -> anyhow::Result<Value> {
    anyhow::ensure!(args.messages > 0, "--messages must be at least 1");
    let settings = messages::Settings {
        messages: args.messages,
        batch_size: args.worker_batch_size.max(1),
        concurrency: args.concurrency,
        duration: seconds("duration", args.duration)?,
        warmup: seconds("warmup", args.warmup)?,
        receiver_latency: Duration::from_millis(args.receiver_latency_ms),
    };
    messages::run(database_url, &settings).await
}

async fn measure(
    args: &Args,
    targets: &[Target],
    db: &fresh_db::FreshDb,
) -> anyhow::Result<(Value, Value)> {
    let cold = if args.skip_cold_start {
        json!({"skipped": true})
    } else {
        cold_start(args, targets, &db.url).await?
    };
    let throughput = if args.skip_throughput {
        json!({"skipped": true})
    } else {
        let settings = throughput::Settings {
            concurrency: args.concurrency,
            duration: seconds("duration", args.duration)?,
            warmup: seconds("warmup", args.warmup)?,
            max_requests: args.max_requests.max(1),
            request_timeout: Duration::from_secs(10),
        };
        throughput::run(&db.url, &db.org_key, &settings).await?
    };
    Ok((cold, throughput))
}

/// The function binaries to measure, bench-hello first.
fn cold_start_targets(args: &Args, bin_dir: &Path, repo: &Path) -> anyhow::Result<Vec<Target>> {
    let events_dir = repo.join("events");
    let names: Vec<String> = if !args.functions.is_empty() {
        args.functions.clone()
    } else if args.events == EventSet::All {
        let src = repo.join("functions/src/bin");
        let mut names: Vec<String> = std::fs::read_dir(&src)
            .with_context(|| format!("listing {}", src.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "rs").then_some(())?;
                let stem = p.file_stem()?.to_str()?.to_owned();
                stem.starts_with("api_").then_some(stem)
            })
            .collect();
        names.sort();
        names
    } else {
        DEFAULT_FUNCTIONS.iter().map(|s| s.to_string()).collect()
    };
    let unknown_key = args.events == EventSet::Default;

    let binary = |name: &str| -> anyhow::Result<PathBuf> {
        let p = bin_dir.join(name);
        anyhow::ensure!(
            p.is_file(),
            "{} is missing: build with `cargo build --release -p ledgerline-functions -p ledgerline-bench` (or pass --bin-dir)",
            p.display()
        );
        Ok(p)
    };
    let (hello_event, _) = coldstart::load_event(&events_dir, "api_health", false)?;
    let mut targets = vec![Target {
        name: "bench-hello".into(),
        path: binary("bench-hello")?,
        event: hello_event,
        event_file: "events/api_health.json".into(),
        event_note: "as-is (the hello function ignores it)".into(),
    }];
    for name in names {
        let (event, note) = coldstart::load_event(&events_dir, &name, unknown_key)?;
        targets.push(Target {
            path: binary(&name)?,
            event,
            event_file: format!("events/{name}.json"),
            event_note: note,
            name,
        });
    }
    Ok(targets)
}

async fn cold_start(args: &Args, targets: &[Target], database_url: &str) -> anyhow::Result<Value> {
    let api = runtime_api::RuntimeApi::start().await?;
    let settings = coldstart::Settings {
        runtime_api: api.host_port(),
        database_url: database_url.to_owned(),
        timeout: seconds("cold-start-timeout", args.cold_start_timeout)?,
        child_logs: args.child_logs,
    };
    eprintln!(
        "cold start: {} binaries × {} runs (+{} warm-up) against the runtime API on {}",
        targets.len(),
        args.runs,
        args.warmup_runs,
        settings.runtime_api
    );
    let mut seq = 0u64;
    for t in targets {
        for _ in 0..args.warmup_runs {
            seq += 1;
            if let Err(e) = coldstart::measure_once(&api, t, &settings, seq).await {
                eprintln!("cold start: warm-up of {} failed: {e}", t.name);
            }
        }
    }
    // Round-robin, so drift on the machine hits every binary alike.
    let mut runs: Vec<Runs> = targets.iter().map(|_| Runs::default()).collect();
    for round in 0..args.runs {
        for (t, r) in targets.iter().zip(runs.iter_mut()) {
            seq += 1;
            r.record(coldstart::measure_once(&api, t, &settings, seq).await);
        }
        eprint!("\rcold start: round {}/{}", round + 1, args.runs);
    }
    eprintln!();

    let hello = Some((runs[0].median(), runs[0].init_median()));
    let baseline = runs[0].to_json(&targets[0], None, args.target_ratio);
    let functions: Vec<Value> = targets
        .iter()
        .zip(&runs)
        .skip(1)
        .map(|(t, r)| r.to_json(t, hello, args.target_ratio))
        .collect();
    for f in &functions {
        eprintln!(
            "cold start: {:<20} median {} ms (×{} hello), init {} ms (×{}), target met: {}",
            f["binary"].as_str().unwrap_or_default(),
            f["median_ms"],
            f["ratio_vs_hello"],
            f["init_median_ms"],
            f["init_ratio_vs_hello"],
            f["target_met"]
        );
    }
    let all_met = !functions.is_empty() && functions.iter().all(|f| f["target_met"] == json!(true));
    let selection = match (args.functions.is_empty(), args.events) {
        (false, _) => "explicit --function list",
        (true, EventSet::Default) => "default: api_health, api_openapi (public) and api_me",
        (true, EventSet::All) => "all: every api_* binary in functions/src/bin",
    };
    Ok(json!({
        "method": "in-process AWS Lambda Runtime API emulator (hyper, 127.0.0.1); each run spawns the binary with a clean Lambda-like environment and times spawn → its first invocation response fully received; then the process is killed",
        "runs_per_binary": args.runs,
        "warmup_runs_per_binary": args.warmup_runs,
        "order": "round-robin across binaries",
        "memory_size_mb": 256,
        "database": "the bench database (so api_health's SELECT 1 and api_me's key lookup really run)",
        "event_selection": {
            "set": match args.events { EventSet::Default => "default", EventSet::All => "all" },
            "functions": selection,
            "placeholders": if args.events == EventSet::Default {
                "an Authorization placeholder is replaced by a well-formed unknown org key (401 after a key lookup)"
            } else {
                "left as-is"
            },
        },
        "size_note": "size_bytes is the file in the release target dir; the release profile strips symbols (strip = true)",
        "target_ratio": args.target_ratio,
        "target_rule": "target_met: median cold start ≤ target_ratio × bench-hello's median, with no failed run",
        "init_note": "init_median_ms is spawn → the function's first GET …/invocation/next, i.e. what Lambda reports as Init Duration; the rest up to median_ms is the first request itself (for DB-backed routes: opening the first Postgres connection)",
        "baseline": baseline,
        "functions": functions,
        "all_targets_met": all_met,
    }))
}
