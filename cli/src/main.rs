//! `ledgerline`: the local all-in-one server, migrations and bootstrap.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ledgerline::accounts::{self, Actor, NewApiKey, NewOrg, NewUser};
use ledgerline::config::Config;
use ledgerline::context::AppContext;
use ledgerline::http::pipeline::{Pipeline, Serve};
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
            let config = Config::from_env()?;
            let applied = ledgerline::db::migrate(&config.database_url).await?;
            if !applied.is_empty() {
                tracing::info!(?applied, "applied migrations");
            }
            let ctx = AppContext::new(config)?;
            let pipeline = Arc::new(Pipeline::new(ctx, Serve::All));
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "ledgerline serving every route");
            ledgerline::server::serve(listener, pipeline, ledgerline::server::shutdown_signal())
                .await?;
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
            };
            let tx = client.transaction().await?;
            let (org, _) = accounts::create_org(
                &*tx,
                &NewOrg {
                    name: org_name,
                    plan_tier: None,
                },
                &actor,
            )
            .await
            .map_err(api_err)?;
            let (user, _) = accounts::create_user(
                &*tx,
                org.id,
                &NewUser {
                    email,
                    name: None,
                    role: Some("owner".into()),
                },
                &actor,
            )
            .await
            .map_err(api_err)?;
            let (org_key, _) = accounts::create_org_key(
                &*tx,
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
            .map_err(api_err)?;
            let op_key = accounts::create_operator_key(&*tx, "bootstrap operator key", &actor)
                .await
                .map_err(api_err)?;
            tx.commit().await?;
            ledgerline::ledger::events::sequence_pending(&**client, org.id, ctx.clock.now())
                .await
                .map_err(api_err)?;
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

fn api_err(e: ledgerline::error::ApiError) -> anyhow::Error {
    match e.cause {
        Some(c) => c.context(e.message),
        None => anyhow::anyhow!("{}: {}", e.code, e.message),
    }
}

fn uuid_like() -> String {
    format!("{:x}", std::process::id())
}
