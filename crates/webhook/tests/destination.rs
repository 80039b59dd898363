//! SSRF: deliveries to loopback, private, link-local and metadata addresses, and to a name
//! that resolves to loopback, are refused without the allow-list, and no traffic reaches the
//! destination; with the network allowed, the same delivery arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::ensure;
use onephase_webhook::destination::{
    AddressPolicy, DeliveryClient, DeliveryError, DestinationError,
};

/// A listener on 127.0.0.1 that counts the connections it accepts.
async fn counting_listener() -> anyhow::Result<(u16, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0_u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    Ok((port, count))
}

fn post(client: &DeliveryClient, url: &str) -> anyhow::Result<reqwest::Request> {
    Ok(client.http().post(url).body("{}").build()?)
}

#[tokio::test]
async fn internal_destinations_are_refused_before_any_traffic() -> anyhow::Result<()> {
    let (port, connections) = counting_listener().await?;
    let strict = DeliveryClient::new(AddressPolicy::default(), Duration::from_secs(2))?;
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        "http://10.0.0.1/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let checked = strict.check(&url).await;
        ensure!(
            matches!(checked, Err(DestinationError::Forbidden { .. })),
            "{url}: {checked:?}"
        );
        let sent = strict.send(post(&strict, &url)?).await;
        match sent {
            Err(DeliveryError::Destination(DestinationError::Forbidden { .. })) => {}
            other => anyhow::bail!("{url} was not refused: {other:?}"),
        }
    }
    ensure!(
        connections.load(Ordering::SeqCst) == 0,
        "a refused destination received a connection"
    );

    // Allowed on purpose, the same delivery arrives.
    let local = DeliveryClient::new(
        AddressPolicy::default().allow("127.0.0.0/8")?,
        Duration::from_secs(2),
    )?;
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
    ] {
        local.check(&url).await?;
        let response = local.send(post(&local, &url)?).await?;
        ensure!(response.status() == 200);
    }
    ensure!(connections.load(Ordering::SeqCst) >= 2);
    let bad = local.check("ftp://example.com/x").await;
    ensure!(
        matches!(bad, Err(DestinationError::InvalidUrl(_))),
        "{bad:?}"
    );
    Ok(())
}
