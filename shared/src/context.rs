//! What every use case gets: configuration, the database pool, the blob
//! store and the clock. Built once per process (per Lambda instance) and
//! shared by reference.

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use deadpool_postgres::Pool;
use std::sync::Arc;

pub struct AppContext {
    pub config: Config,
    pub pool: Pool,
    pub clock: Arc<dyn Clock>,
}

impl AppContext {
    /// Builds the context without any I/O: the pool connects lazily.
    pub fn new(config: Config) -> anyhow::Result<Arc<AppContext>> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<AppContext>> {
        let pool = crate::db::pool(&config.database_url, config.db_pool_size)?;
        Ok(Arc::new(AppContext {
            config,
            pool,
            clock,
        }))
    }

    pub async fn db(&self) -> Result<deadpool_postgres::Client, crate::error::ApiError> {
        Ok(self.pool.get().await?)
    }
}
