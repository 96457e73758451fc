//! `ledgerline`: the local all-in-one server, migrations and bootstrap.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ledgerline::accounts::{self, Actor, NewApiKey, NewOrg, NewUser};
use ledgerline::config::Config;
use ledgerline::context::AppContext;
use ledgerline::error::ApiError;
use ledgerline::http::pipeline::{Pipeline, Serve};
use ledgerline::ledger::seal;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "ledgerline",
    version,
    about = "Ledgerline: evidence vault, tamper-evident ledger and message delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every endpoint on one port against DATABASE_URL (migrates first).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "LEDGERLINE_ADDR", default_value = "127.0.0.1:8080")]
        addr: String,
        /// Directory for local blobs (used when LEDGERLINE_BLOB_BACKEND is local).
        #[arg(long, env = "LEDGERLINE_DATA_DIR", default_value = ".local/data")]
        data_dir: String,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Create an organisation, a user, an org key and an operator key.
    Bootstrap {
        #[arg(long, default_value = "Demo Org")]
        org_name: String,
        #[arg(long, default_value = "owner@example.com")]
        email: String,
        /// Print the result as one JSON object (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Seal the ledger through a past UTC day (what the nightly job does):
    /// each organisation's unsealed days up to DAY, oldest first.
    Seal {
        /// The day to seal through, YYYY-MM-DD; must be before today (UTC).
        #[arg(long)]
        day: String,
        /// Only this organisation (default: every organisation with events that day).
        #[arg(long)]
        org: Option<String>,
        /// Print one JSON object per organisation.
        #[arg(long)]
        json: bool,
    },
    /// Generate a new checkpoint signing key and print it with its verifier
    /// key (for LEDGERLINE_CHECKPOINT_KEY / _VERIFIER_KEY in AWS).
    CheckpointKey {
        /// The key name (by convention the checkpoint origin).
        #[arg(
            long,
            env = "LEDGERLINE_CHECKPOINT_ORIGIN",
            default_value = "ledgerline.local"
        )]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ledgerline::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { addr, data_dir } => {
            // The flag is the documented way; make it what the config reads.
            std::env::set_var("LEDGERLINE_DATA_DIR", &data_dir);
            let mut config = Config::from_env()?;
            // Locally, receivers on 127.0.0.1/localhost over plain http are
            // fine unless LEDGERLINE_ALLOW_INSECURE_ENDPOINTS says otherwise.
            if std::env::var_os(ledgerline::messages::config::ALLOW_INSECURE_ENV).is_none() {
                config.messages.allow_insecure_endpoints = true;
            }
            let applied = ledgerline::db::migrate(&config.database_url).await?;
            if !applied.is_empty() {
                tracing::info!(?applied, "applied migrations");
            }
            let ctx = AppContext::new(config)?;
            // Load (or generate once, into the data dir) the checkpoint key
            // now, so a bad key stops the server at start-up.
            let signer = seal::checkpoint_signer(&ctx)
                .await
                .map_err(ApiError::into_anyhow)?;
            tracing::info!(verifier_key = %signer.verifier_key(), "checkpoint key");
            let pipeline = Arc::new(Pipeline::new(ctx.clone(), Serve::All));
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            // The nightly seal (02:00 UTC) and its worker, in-process.
            let (stop_jobs, jobs_stopped) = tokio::sync::watch::channel(false);
            // The message worker (and its sweep) on the Postgres queue.
            let messages = tokio::spawn(ledgerline::messages::worker::run_local(
                ctx.clone(),
                jobs_stopped.clone(),
            ));
            let jobs = tokio::spawn(ledgerline::jobs::run_local(ctx, jobs_stopped));
            tracing::info!(addr = %listener.local_addr()?, "ledgerline serving every route");
            // On SIGINT/SIGTERM the workers are told at once (they finish
            // their current batch for up to 5 s) while the server drains.
            let stop_jobs = Arc::new(stop_jobs);
            let stop_on_signal = stop_jobs.clone();
            let shutdown = async move {
                ledgerline::server::shutdown_signal().await;
                let _ = stop_on_signal.send(true);
            };
            let served = ledgerline::server::serve(listener, pipeline, shutdown).await;
            // The worker finishes its current batch, for up to 5 s.
            let _ = stop_jobs.send(true);
            if tokio::time::timeout(std::time::Duration::from_secs(5), jobs)
                .await
                .is_err()
            {
                tracing::warn!("the roots worker did not stop within 5 s");
            }
            if tokio::time::timeout(std::time::Duration::from_secs(5), messages)
                .await
                .is_err()
            {
                tracing::warn!("the message worker did not stop within 5 s");
            }
            served?;
            Ok(())
        }
        Command::Seal { day, org, json } => seal_command(&day, org.as_deref(), json).await,
        Command::CheckpointKey { name } => {
            let signer = ledgerline::ledger::checkpoint::CheckpointSigner::generate(&name)
                .map_err(|e| anyhow::anyhow!("cannot generate a key named '{name}': {e}"))?;
            println!("LEDGERLINE_CHECKPOINT_KEY={}", signer.private_key());
            println!(
                "LEDGERLINE_CHECKPOINT_VERIFIER_KEY={}",
                signer.verifier_key()
            );
            eprintln!("(the first line is a secret: store it in Secrets Manager, never in git)");
            Ok(())
        }
        Command::Migrate => {
            let config = Config::from_env()?;
            let applied = ledgerline::db::migrate(&config.database_url).await?;
            if applied.is_empty() {
                println!("database is up to date");
            } else {
                for m in applied {
                    println!("applied {m}");
                }
            }
            Ok(())
        }
        Command::Bootstrap {
            org_name,
            email,
            json,
        } => {
            let config = Config::from_env()?;
            ledgerline::db::migrate(&config.database_url).await?;
            let ctx = AppContext::new(config)?;
            let mut client = ctx.pool.get().await.context("connecting to the database")?;
            let actor = Actor {
                key_id: None,
                request_id: format!("bootstrap-{}", uuid_like()),
                at: ctx.clock.now(),
            };
            let tx = client.transaction().await?;
            let (org, _) = accounts::create_org(
                &tx,
                &NewOrg {
                    name: org_name,
                    plan_tier: None,
                },
                &actor,
            )
            .await
            .map_err(ApiError::into_anyhow)?;
            let (user, _) = accounts::create_user(
                &tx,
                org.id,
                &NewUser {
                    email,
                    name: None,
                    role: Some("owner".into()),
                },
                &actor,
            )
            .await
            .map_err(ApiError::into_anyhow)?;
            let (org_key, _) = accounts::create_org_key(
                &tx,
                org.id,
                &NewApiKey {
                    name: "bootstrap org key".into(),
                    scope: None,
                    user_id: Some(user.id),
                    project_id: None,
                },
                &actor,
            )
            .await
            .map_err(ApiError::into_anyhow)?;
            let op_key = accounts::create_operator_key(&*tx, "bootstrap operator key", &actor)
                .await
                .map_err(ApiError::into_anyhow)?;
            tx.commit().await?;
            ledgerline::ledger::events::flush(&**client)
                .await
                .map_err(ApiError::into_anyhow)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "org_id": org.id,
                        "user_id": user.id,
                        "org_api_key": org_key.key,
                        "operator_api_key": op_key.key,
                    })
                );
            } else {
                println!("organisation  {} ({})", org.name, org.id);
                println!("user          {} ({})", user.email, user.id);
                println!("org key       {}", org_key.key);
                println!("operator key  {}", op_key.key);
                println!("(keys are shown once; only their hashes are stored)");
            }
            Ok(())
        }
    }
}

async fn seal_command(day: &str, org: Option<&str>, json: bool) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    ledgerline::db::migrate(&config.database_url).await?;
    let ctx = AppContext::new(config)?;
    let reports = ledgerline::jobs::manual_seal(&ctx, day, org).await?;
    if reports.is_empty() && !json {
        println!("no organisation has events on {day}");
    }
    for report in reports {
        let org = report.org_id;
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else if report.sealed.is_empty() {
            println!("org {org}: nothing to seal through {day} (already sealed, or no events)");
        } else {
            for r in &report.sealed {
                println!(
                    "org {org}: sealed {} ({} events, seq {}..{}, day root {}, tree root {})",
                    r.day,
                    r.event_count,
                    r.first_seq,
                    r.last_seq,
                    hex_str(&r.day_root),
                    hex_str(&r.tree_root)
                );
            }
        }
    }
    Ok(())
}

fn hex_str(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid_like() -> String {
    format!("{:x}", std::process::id())
}
