//! The tower layer in front of a real axum service over real HTTP.

#[cfg(not(feature = "http"))]
#[test]
fn http_layer_needs_the_http_feature() {
    eprintln!("onephase-limit was built without its `http` feature: the layer tests did not run");
}

#[cfg(feature = "http")]
mod suite {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::ensure;
    use axum::Router;
    use axum::routing::get;
    use onephase_limit::layer::{RateLimitLayer, by_header, by_peer_ip};
    use onephase_limit::{Algorithm, LocalLimiter, Policy};
    use reqwest::StatusCode;

    async fn serve(app: Router) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        Ok(addr)
    }

    #[tokio::test]
    async fn refused_requests_get_429_with_retry_after_and_ratelimit_headers() -> anyhow::Result<()>
    {
        let policy = Policy::new(Algorithm::FixedWindow, 3, Duration::from_secs(60))?;
        let limiter = Arc::new(LocalLimiter::new(policy));
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(RateLimitLayer::new(
                limiter,
                "per-key",
                by_header("x-api-key"),
            ));
        let addr = serve(app).await?;
        let http = reqwest::Client::new();
        let get = |key: Option<&str>| {
            let mut r = http.get(format!("http://{addr}/"));
            if let Some(key) = key {
                r = r.header("x-api-key", key);
            }
            r.send()
        };
        for n in 0..3 {
            let ok = get(Some("a")).await?;
            ensure!(ok.status() == StatusCode::OK);
            let policy = ok
                .headers()
                .get("ratelimit-policy")
                .and_then(|v| v.to_str().ok());
            ensure!(policy == Some("\"per-key\";q=3;w=60"), "{policy:?}");
            let left = ok
                .headers()
                .get("ratelimit")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            ensure!(
                left.starts_with(&format!("\"per-key\";r={};t=", 2 - n)),
                "{left}"
            );
        }
        let refused = get(Some("a")).await?;
        ensure!(refused.status() == StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no Retry-After"))?;
        ensure!((1..=60).contains(&retry), "{retry}");
        ensure!(
            refused
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                == Some("application/problem+json")
        );
        ensure!(
            get(Some("b")).await?.status() == StatusCode::OK,
            "keys are separate"
        );
        ensure!(
            get(None).await?.status() == StatusCode::OK,
            "no key, no limit"
        );
        Ok(())
    }

    #[tokio::test]
    async fn peers_are_keyed_by_ip() -> anyhow::Result<()> {
        let policy = Policy::new(Algorithm::Gcra, 2, Duration::from_secs(60))?;
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(RateLimitLayer::new(
                Arc::new(LocalLimiter::new(policy)),
                "ip",
                by_peer_ip(),
            ));
        let addr = serve(app).await?;
        let http = reqwest::Client::new();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(
                http.get(format!("http://{addr}/"))
                    .send()
                    .await?
                    .status()
                    .as_u16(),
            );
        }
        ensure!(statuses == vec![200, 200, 429, 429], "{statuses:?}");
        Ok(())
    }
}
