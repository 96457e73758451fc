//! A private, migrated database on DATABASE_URL's server for one bench run,
//! with one organisation key, dropped afterwards.

use anyhow::Context;
use ledgerline::accounts::{self, Actor, NewApiKey, NewOrg};
use ledgerline::error::ApiError;

pub struct FreshDb {
    pub name: String,
    pub url: String,
    pub org_key: String,
    admin_url: String,
}

/// The same connection string with another database name. Handles both the
/// URL form and the `key=value` form (where a later `dbname` wins).
pub fn with_database(url: &str, db: &str) -> String {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return format!("{url} dbname={db}");
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

impl FreshDb {
    pub async fn create(admin_url: &str) -> anyhow::Result<FreshDb> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("ll_bench_{}_{nanos:08x}", std::process::id());
        {
            let admin = ledgerline::db::pool(admin_url, 1)?;
            let client = admin
                .get()
                .await
                .context("connecting to DATABASE_URL (is Postgres running?)")?;
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
        let db = FreshDb {
            url: with_database(admin_url, &name),
            name,
            org_key: String::new(),
            admin_url: admin_url.to_owned(),
        };
        match db.prepare().await {
            Ok(key) => Ok(FreshDb { org_key: key, ..db }),
            Err(e) => {
                db.drop_database().await;
                Err(e)
            }
        }
    }

    async fn prepare(&self) -> anyhow::Result<String> {
        ledgerline::db::migrate(&self.url).await?;
        let pool = ledgerline::db::pool(&self.url, 1)?;
        let mut client = pool
            .get()
            .await
            .context("connecting to the bench database")?;
        // The account use cases run in a transaction (their ledger events
        // commit with them); sequenced right after.
        let tx = client.transaction().await?;
        let actor = Actor {
            key_id: None,
            request_id: "bench-bootstrap".into(),
            at: chrono::Utc::now(),
        };
        let (org, _) = accounts::create_org(
            &tx,
            &NewOrg {
                name: "Bench Org".into(),
                plan_tier: None,
            },
            &actor,
        )
        .await
        .map_err(ApiError::into_anyhow)?;
        let (key, _) = accounts::create_org_key(
            &tx,
            org.id,
            &NewApiKey {
                name: "bench org key".into(),
                scope: None,
                user_id: None,
                project_id: None,
            },
            &actor,
        )
        .await
        .map_err(ApiError::into_anyhow)?;
        tx.commit().await?;
        ledgerline::ledger::events::flush(&**client)
            .await
            .map_err(ApiError::into_anyhow)?;
        Ok(key.key)
    }

    /// Drops the database, closing any connection still open to it.
    pub async fn drop_database(&self) {
        let result = async {
            let admin = ledgerline::db::pool(&self.admin_url, 1)?;
            let client = admin.get().await?;
            let forced = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            if client.batch_execute(&forced).await.is_err() {
                // Before Postgres 13 there is no FORCE.
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {}", self.name))
                    .await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            eprintln!("warning: could not drop database {}: {e:#}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/ledgerline", "x"),
            "postgres://u@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
        assert_eq!(
            with_database("host=h user=u dbname=a", "x"),
            "host=h user=u dbname=a dbname=x"
        );
    }
}
