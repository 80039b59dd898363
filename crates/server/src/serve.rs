//! Running the server: open and migrate the store, bootstrap the first admin token, listen,
//! and stop gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use onephase_core::{Classify, Clock, ErrorKind, SharedClock, SystemClock};
use onephase_store::{Migrations, Store, StoreError};
use tokio::net::TcpListener;

use crate::app::router;
use crate::auth::{AuthError, Tokens, generate_token};
use crate::config::ServerConfig;
use crate::lease::LeaseService;
use crate::limit::LimitService;
use crate::outbox::{OutboxService, OutboxStartError};
use crate::saga::SagaService;
use crate::state::{AppState, Services};
use crate::webhook::WebhookService;

/// Every component's migrations, in dependency order. `onephase migrate` and `onephase serve`
/// apply these.
pub fn migrations() -> Vec<Migrations> {
    vec![
        Migrations::new(
            "server",
            sqlx::migrate!("migrations/sqlite"),
            sqlx::migrate!("migrations/postgres"),
        ),
        onephase_outbox::migrations(),
        onephase_broker::log::migrations(),
        onephase_saga::migrations(),
        onephase_webhook::migrations(),
        onephase_lease::migrations(),
        onephase_limit::migrations(),
        onephase_events::migrations(),
        onephase_partition::store::migrations(),
    ]
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token configuration is invalid, or the token table could not be read.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The listen address is taken or not allowed.
    #[error(
        "cannot listen on {addr}: {source} (is another server running? choose another address with --listen)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An outbox relay could not start.
    #[error(transparent)]
    Outbox(#[from] OutboxStartError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Serving failed.
    #[error("serving HTTP failed: {0}")]
    Serve(std::io::Error),
}

impl Classify for ServerError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServerError::Store(e) => e.kind(),
            ServerError::Auth(e) => e.kind(),
            ServerError::Bind { .. } => ErrorKind::Unavailable,
            ServerError::Config(_) => ErrorKind::InvalidInput,
            ServerError::Outbox(_) => ErrorKind::Unavailable,
            ServerError::Serve(_) => ErrorKind::Internal,
        }
    }
}

/// A server that is bound and ready to run.
pub struct Server {
    state: AppState,
    router: Router,
    listener: TcpListener,
    bootstrap_token: Option<String>,
}

impl Server {
    /// Opens and migrates the store, binds the listen address, prepares every capability and,
    /// once all of that succeeded, creates the first admin token if the store never had one.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        // Metric handles created from here on (the relays' among them) reach /metrics.
        crate::metrics::prometheus();
        let store = Store::connect(&config.store).await?;
        store.migrate(&migrations()).await?;
        let tokens = Tokens::new(store.clone(), config.tokens.clone())?;
        let clock: SharedClock = Arc::new(SystemClock);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let outbox = OutboxService::open(&store, &config.outbox_relays)?;
        let saga = SagaService::new(&store, &config.saga, &config.outbox_relays)?;
        let webhook = WebhookService::new(&store, &config.webhook, &config.outbox_relays)?;
        let lease = LeaseService::open(&store, &config.lease).await?;
        let limit = LimitService::open(&store, &config.limit)
            .await?
            .with_clock(clock.clone());
        let services = Services {
            outbox,
            saga,
            webhook,
            lease,
            limit,
            events: crate::events::EventsService::new(&store),
            replica: crate::replica::ReplicaService::new(&config.replicas)?,
            kafka: crate::kafka::KafkaService::new(&config.kafka),
            partition: crate::partition::PartitionService::new(
                &store,
                &config.partition,
                clock.clone(),
            )?,
        };
        // Moves are saga runs: every server registers the definition, so any of them can
        // carry on a move another one started.
        let definition =
            services
                .partition
                .saga()
                .map_err(|e| crate::config::ConfigError::Invalid {
                    key: "partition",
                    message: format!("the move saga: {e}"),
                })?;
        services
            .saga
            .orchestrator()
            .register(definition)
            .map_err(|e| crate::config::ConfigError::Invalid {
                key: "partition",
                message: format!("registering the move saga: {e}"),
            })?;
        // Last, once nothing else can fail: a token created by a start that then failed
        // would be stored but never shown.
        let candidate = generate_token(&mut rand::rng());
        let bootstrap_token = tokens
            .bootstrap_admin(&candidate, clock.now())
            .await?
            .then_some(candidate);
        let state = AppState::new(store, tokens, config, clock, services);
        let router = router(state.clone());
        Ok(Self {
            state,
            router,
            listener,
            bootstrap_token,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.config().listen)
    }

    /// The admin token created by this start, if the store had never held a token. Print it:
    /// it is stored only as a hash and cannot be shown again.
    pub fn bootstrap_token(&self) -> Option<&str> {
        self.bootstrap_token.as_deref()
    }

    /// The application state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting connections and waits up to
    /// the configured grace period for requests in flight before closing the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let grace = self.state.config().shutdown_grace;
        let addr = self.local_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .into_future();
        let mut server = tokio::spawn(server);
        let (stop_relays, relays_stopped) = tokio::sync::watch::channel(false);
        let mut relays = self.state.outbox().spawn(relays_stopped.clone());
        relays.extend(self.state.saga().spawn(relays_stopped.clone()));
        relays.extend(self.state.webhook().spawn(relays_stopped.clone()));
        relays.push(self.state.events().spawn(relays_stopped.clone()));
        relays.extend(self.state.replica().spawn(relays_stopped.clone()));
        relays.extend(self.state.kafka().spawn(relays_stopped.clone()));
        relays.push(self.state.partition().spawn(relays_stopped.clone()));
        relays.push(crate::dashboard::history::spawn(
            self.state.clone(),
            relays_stopped,
        ));
        tracing::info!(%addr, store = %self.state.store().url(), "onephase listening on http://{addr}");

        let finished = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown => None,
        };
        let result = match finished {
            Some(result) => result,
            None => {
                tracing::info!(
                    grace_secs = grace.as_secs(),
                    "shutting down: finishing requests in flight"
                );
                let _ = stop_tx.send(());
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(
                            "requests still in flight after the grace period; closing anyway"
                        );
                        server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        // Relays finish the round in hand and the orchestrator records the outcomes of the calls
        // in flight; one stuck is abandoned after the grace period (its rows and runs come back
        // when their claims expire).
        let _ = stop_relays.send(true);
        let aborts: Vec<_> = relays.iter().map(|r| r.abort_handle()).collect();
        if tokio::time::timeout(grace, futures::future::join_all(relays))
            .await
            .is_err()
        {
            tracing::warn!(
                "an outbox relay, the saga orchestrator or the webhook dispatcher did not stop within the grace period; abandoning it"
            );
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        self.state.store().close().await;
        match result {
            Ok(Ok(())) => {
                tracing::info!("onephase stopped");
                Ok(())
            }
            Ok(Err(e)) => Err(ServerError::Serve(e)),
            Err(join) => Err(ServerError::Serve(std::io::Error::other(join))),
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
