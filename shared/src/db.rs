//! Postgres: the connection pool and the embedded migrations.

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub mod tls;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// A lazily connecting pool: building it does no I/O, so Lambda cold starts
/// pay for a connection only when the first request needs one. TLS as the
/// connection string asks ([`tls::parse`]).
pub fn pool(database_url: &str, max_size: usize) -> anyhow::Result<Pool> {
    let (mut pg, tls) = tls::parse(database_url)?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    if pg.get_application_name().is_none() {
        pg.application_name("ledgerline");
    }
    let mgr = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("building the database pool")
}

/// Applies every pending migration. Serialised with an advisory lock so two
/// processes starting at once do not race.
pub async fn migrate(database_url: &str) -> anyhow::Result<Vec<String>> {
    migrate_to(database_url, None).await
}

/// Applies migrations up to and including `version` (None: all of them);
/// tests use it to check a migration against data left by older ones.
pub async fn migrate_to(database_url: &str, version: Option<u32>) -> anyhow::Result<Vec<String>> {
    let (pg, tls) = tls::parse(database_url)?;
    let (mut client, connection) = pg
        .connect(tls)
        .await
        .context("connecting to the database (is DATABASE_URL right and the server up?)")?;
    let conn = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock(7384105)", &[])
        .await
        .context("taking the migration lock")?;
    let mut runner = embedded::migrations::runner();
    if let Some(v) = version {
        runner = runner.set_target(refinery::Target::Version(v));
    }
    let report = runner
        .run_async(&mut client)
        .await
        .context("applying migrations");
    let _ = client
        .execute("SELECT pg_advisory_unlock(7384105)", &[])
        .await;
    drop(client);
    let _ = conn.await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

// Hot paths run their statements through these: each is prepared once per
// connection (deadpool's statement cache) and then costs one round trip,
// where `client.execute(&str, ..)` costs two (parse, then bind and
// execute) every time. Parameter types are inferred exactly as for an
// unprepared statement.

/// `execute` of a cached prepared statement.
pub async fn execute(
    db: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.execute(&statement, params).await
}

/// `query` of a cached prepared statement.
pub async fn query(
    db: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.query(&statement, params).await
}

/// `query_opt` of a cached prepared statement.
pub async fn query_opt(
    db: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.query_opt(&statement, params).await
}

/// `query_one` of a cached prepared statement.
pub async fn query_one(
    db: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.query_one(&statement, params).await
}
