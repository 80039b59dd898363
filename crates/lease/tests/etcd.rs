//! The etcd backend against a real etcd: grants, tokens from revisions, refusals, waiting,
//! and a holder cut off from etcd (through the fault proxy) learning it before its deadline.

#![cfg_attr(not(feature = "etcd"), allow(unused))]

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_suite() {
    onephase_testkit::engine_not_built(onephase_testkit::Engine::Etcd, "onephase-lease", "etcd");
}

#[cfg(feature = "etcd")]
mod suite {
    use std::time::{Duration, Instant};

    use anyhow::ensure;
    use onephase_lease::{EtcdLeases, FencingToken, LeaseError, Leases};
    use onephase_testkit::{Engine, FaultProxy, engine_url};

    fn prefix() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("onephase-test/{nanos:x}/")
    }

    async fn leases(url: &str, prefix: &str) -> anyhow::Result<Leases> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(2));
        let client = etcd_client::Client::connect([url], Some(options)).await?;
        Ok(Leases::new(EtcdLeases::with_prefix(client, prefix)))
    }

    #[tokio::test]
    async fn grants_refusals_and_tokens_on_etcd() -> anyhow::Result<()> {
        let Some(url) = engine_url(Engine::Etcd) else {
            return Ok(());
        };
        let prefix = prefix();
        let leases = leases(&url, &prefix).await?;
        let ttl = Duration::from_secs(2);
        let a = leases.try_acquire("job", "a", ttl).await?;
        let held = leases.try_acquire("job", "b", ttl).await;
        ensure!(
            matches!(&held, Err(LeaseError::Held { holder, token, .. }) if holder == "a" && *token == a.token()),
            "{held:?}"
        );
        let other = FencingToken::new(a.token().get() + 1);
        ensure!(matches!(
            leases.release("job", other).await,
            Err(LeaseError::NotHeld { .. })
        ));
        ensure!(matches!(
            leases.renew("job", other, ttl).await,
            Err(LeaseError::NotHeld { .. })
        ));
        ensure!(matches!(
            leases.release("never-granted", FencingToken::new(1)).await,
            Err(LeaseError::NotHeld { .. })
        ));
        ensure!(matches!(
            leases.try_acquire("job", "b", Duration::ZERO).await,
            Err(LeaseError::Invalid(_))
        ));
        let renewed = leases.renew("job", a.token(), ttl).await?;
        ensure!(renewed.token == a.token() && renewed.holder == "a");
        let listed = leases.list().await?;
        ensure!(
            listed.len() == 1
                && listed[0].holder.as_deref() == Some("a")
                && listed[0].expires_at.is_some(),
            "{listed:?}"
        );
        let mut last = a.token();
        a.release().await?;
        for _ in 0..5 {
            let g = leases.try_acquire("job", "c", ttl).await?;
            ensure!(g.token() > last);
            last = g.token();
            g.release().await?;
        }
        // A lapse (no release) hands it on too, with a larger token.
        let lapsing = leases
            .try_acquire("job", "d", Duration::from_secs(1))
            .await?;
        let started = Instant::now();
        let next = leases
            .acquire("job", "e", ttl, Duration::from_secs(10))
            .await?;
        ensure!(next.token() > lapsing.token());
        ensure!(started.elapsed() >= Duration::from_millis(900));
        // The lapsed grant's release (one revoke of its own etcd lease, gone) changes nothing.
        let lapsed = lapsing.token();
        ensure!(matches!(
            leases.release("job", lapsed).await,
            Err(LeaseError::NotHeld { .. })
        ));
        ensure!(leases.list().await?[0].holder.as_deref() == Some("e"));
        let released = next.token();
        next.release().await?;
        // Released twice: the second is refused.
        ensure!(matches!(
            leases.release("job", released).await,
            Err(LeaseError::NotHeld { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_holder_cut_off_from_etcd_learns_it_before_its_deadline() -> anyhow::Result<()> {
        let Some(url) = engine_url(Engine::Etcd) else {
            return Ok(());
        };
        let upstream = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let proxy = FaultProxy::start(&upstream).await?;
        let prefix = prefix();
        let through = leases(&format!("http://{}", proxy.local_addr()), &prefix).await?;
        let direct = leases(&url, &prefix).await?;
        let ttl = Duration::from_secs(3);
        let mut g = through.try_acquire("cut", "a", ttl).await?;
        g.keep_alive();
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        ensure!(g.is_held(), "renewals go through the proxy");
        proxy.cut().await;
        let cut_at = Instant::now();
        let deadline = g.deadline();
        let lapse = tokio::time::timeout(Duration::from_secs(10), g.lapsed()).await?;
        let learned_at = Instant::now();
        ensure!(
            learned_at <= deadline + Duration::from_millis(100),
            "{lapse:?} {:?} after the deadline",
            learned_at - deadline
        );
        ensure!(learned_at - cut_at < ttl);
        let b = direct
            .acquire("cut", "b", ttl, Duration::from_secs(10))
            .await?;
        ensure!(b.token() > g.token(), "tokens never go back");
        proxy.restore();
        b.release().await?;
        Ok(())
    }
}
