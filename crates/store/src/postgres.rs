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
    PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(|source| StoreError::Connect {
            backend: Backend::Postgres,
            url: redact_url(url),
            source,
        })
}
