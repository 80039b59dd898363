use std::str::FromStr;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::{Backend, StoreError, StoreOptions, redact_url};

pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<PgPool, StoreError> {
    let connect = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidUrl {
            url: redact_url(url),
            reason: e.to_string(),
        })?
        .application_name(&options.application_name);
    let failed = |source| StoreError::Connect {
        backend: Backend::Postgres,
        url: redact_url(url),
        source,
    };
    // One connection first, on its own: a pool that cannot connect reports only that it timed
    // out waiting, while the connection says why (refused, unknown host, a password, a missing
    // database).
    {
        use sqlx::Connection as _;
        let first = tokio::time::timeout(
            options.acquire_timeout,
            sqlx::PgConnection::connect_with(&connect),
        )
        .await
        .map_err(|_| failed(sqlx::Error::PoolTimedOut))?
        .map_err(failed)?;
        let _ = first.close().await;
    }
    PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(failed)
}
