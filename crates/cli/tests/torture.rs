//! Torture: two `onephase serve` processes share one PostgreSQL and are hurt the way a lease
//! holder is hurt in production, while they work.
//!
//! - **Pauses**: one server is stopped with SIGSTOP for longer than its claims and leases
//!   (the garbage-collection pause of the seed's first post, applied to our own workers), the
//!   other takes its work over, and the first is continued with SIGCONT. Repeatedly.
//! - **Partitions**: each server runs in a network namespace of its own, joined to the test's
//!   host by a veth pair on a bridge the test makes, and reaches PostgreSQL, the broker and the
//!   saga participants through forwarders on the bridge's address. One server's link is cut
//!   (its packets vanish, as behind a failed switch; established connections hang rather than
//!   fail), the other takes over, the link is healed. Repeatedly. Namespaces need root: the
//!   test says so and fails where engines are required (CI runs as root).
//!
//! After each: the invariants of the capability hold and the numbers are printed. Sagas: every
//! run terminal in the state its plan makes, each (key, attempt) sent at most once, the books
//! balanced, and how many runs were taken over, transitions fenced and stale calls refused by
//! the participants' fence. Outbox: every event published, each key's first deliveries in
//! order, each applied once through the inbox, and how many duplicates the inbox absorbed
//! (JetStream's own deduplication by message id takes most before it). Webhooks: every
//! delivery delivered and seen by the receiver, an ordered endpoint's first deliveries in
//! order per partition key, and how many repeats the receiver's dedup by `webhook-id` absorbed.

#[path = "../../saga/tests/common/mod.rs"]
mod participants;

#[path = "../../outbox/tests/common/mod.rs"]
mod outbox;

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use onephase_core::rand::rngs::StdRng;
use onephase_core::rand::{RngExt, SeedableRng};
use onephase_testkit::{Engine, FaultProxy, TestDb, engine_url, engines_required};
use participants::{Expect, Participants, expected, expected_books, order_definition, order_input};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_onephase");
const TOKEN: &str = "op_torture_test_token";
const FAULTS: usize = 4;

/// What the test does to one server at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Pause,
    Partition,
}

/// A bridge on the host and one namespace per server, each joined to it by a veth pair.
/// Removed on drop.
struct Net {
    bridge: String,
    host_ip: String,
    /// (namespace, host end of its veth, its address).
    spaces: Vec<(String, String, String)>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("running ip (Debian's iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Net {
    /// Makes the bridge and `n` namespaces, on a /24 of 10.231-10.238 chosen by process id so
    /// that two test processes never share one.
    fn create(n: usize) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let subnet = format!("10.{}.{}", 231 + pid % 8, (pid / 8) % 250);
        let mut net = Net {
            bridge: format!("opb{}", pid % 1_000_000),
            host_ip: format!("{subnet}.1"),
            spaces: Vec::new(),
        };
        ip(&["link", "add", "name", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_ip),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 0..n {
            let ns = format!("onephase-t{pid}-{i}");
            let host_end = format!("oph{}x{i}", pid % 1_000_000);
            let ns_end = format!("opn{}x{i}", pid % 1_000_000);
            let addr = format!("{subnet}.{}", i + 2);
            ip(&["netns", "add", &ns])?;
            net.spaces
                .push((ns.clone(), host_end.clone(), addr.clone()));
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ])?;
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            ip(&["link", "set", &host_end, "master", &net.bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &ns_end,
            ])?;
            ip(&["-n", &ns, "link", "set", &ns_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Cuts namespace `i` off: its link's host end goes down, so whatever it sends vanishes.
    fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.spaces[i].1, "down"])
    }

    fn heal(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.spaces[i].1, "up"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (ns, host_end, _) in &self.spaces {
            let _ = ip(&["link", "del", host_end]);
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// The namespaces for a partition scenario, or why there are none: `Ok(None)` skips (with the
/// reason printed) when engines are optional; where they are required, a missing privilege
/// fails.
fn namespaces(n: usize) -> anyhow::Result<Option<Net>> {
    match Net::create(n) {
        Ok(net) => Ok(Some(net)),
        Err(e) => {
            let why = format!(
                "the partition scenario needs root, for network namespaces and veth pairs \
                 (Debian's iproute2), and could not make them: {e:#}"
            );
            if engines_required() {
                bail!("{why}; CI runs the suite as root");
            }
            eprintln!("SKIPPED: {why}");
            Ok(None)
        }
    }
}

/// Where the servers are and how they reach the engines.
struct Site {
    net: Option<Net>,
    /// Forwarders on the bridge, kept alive for the test.
    _proxies: Vec<FaultProxy>,
}

impl Site {
    /// An engine URL as the servers must use it: through a forwarder on the bridge in
    /// namespaces, as it is on loopback.
    async fn reach(&mut self, url: &str) -> anyhow::Result<String> {
        let Some(net) = &self.net else {
            return Ok(url.to_owned());
        };
        let (proxy, through) =
            FaultProxy::in_front_of_on(url, &format!("{}:0", net.host_ip)).await?;
        self._proxies.push(proxy);
        Ok(through)
    }

    /// The address server `i` listens on.
    fn listen(&self, i: usize) -> anyhow::Result<String> {
        let host = match &self.net {
            Some(net) => net.spaces[i].2.clone(),
            None => "127.0.0.1".to_owned(),
        };
        Ok(format!("{host}:{}", common::free_port()?))
    }

    /// Starts server `i` logging at info in JSON and returns it with the id its outbox relay
    /// claims rows under (from its "outbox relay running" line).
    async fn spawn_relay(
        &self,
        i: usize,
        config: &Path,
        listen: &str,
    ) -> anyhow::Result<(Child, Uuid)> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = self
            .command(i)
            .args([
                "serve",
                "--log",
                "info",
                "--log-format",
                "json",
                "--listen",
                listen,
                "--config",
            ])
            .arg(config)
            .env_remove("ONEPHASE_STORE")
            .env_remove("ONEPHASE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let id = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                let event: Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(id) = event["fields"]["claimed_by"].as_str() {
                    return Ok(Uuid::parse_str(id)?);
                }
            }
            bail!("server {i} exited before its relay ran")
        })
        .await
        .context("no relay ran within 30 s")??;
        // Keep reading, so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((child, id))
    }

    fn command(&self, i: usize) -> Command {
        match &self.net {
            Some(net) => {
                let mut c = Command::new("ip");
                // `ip netns exec` execs the server: the child's pid is the server's.
                c.args(["netns", "exec", &net.spaces[i].0, BIN]);
                c
            }
            None => Command::new(BIN),
        }
    }

    /// Starts the two servers, configured by `config(i)`, and waits until both answer.
    async fn start_pair(
        &self,
        http: &reqwest::Client,
        config: impl Fn(usize) -> anyhow::Result<std::path::PathBuf>,
    ) -> anyhow::Result<(Vec<Child>, Vec<String>)> {
        let (mut servers, mut bases) = (Vec::new(), Vec::new());
        for i in 0..2 {
            let listen = self.listen(i)?;
            servers.push(self.spawn(i, &config(i)?, &listen)?);
            bases.push(format!("http://{listen}"));
        }
        for base in &bases {
            common::wait_until_up(http, base).await?;
        }
        Ok((servers, bases))
    }

    fn spawn(&self, i: usize, config: &Path, listen: &str) -> anyhow::Result<Child> {
        Ok(self
            .command(i)
            .args(["serve", "--log", "error", "--listen", listen, "--config"])
            .arg(config)
            .env_remove("ONEPHASE_STORE")
            .env_remove("ONEPHASE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?)
    }

    /// Applies `fault` to server `i` (whose process is `child`), or lifts it.
    fn hurt(&self, fault: Fault, i: usize, child: &Child, on: bool) -> anyhow::Result<()> {
        match fault {
            Fault::Pause => {
                let pid = child.id().context("a running server")?;
                signal(if on { "STOP" } else { "CONT" }, pid)
            }
            Fault::Partition => {
                let net = self.net.as_ref().context("namespaces")?;
                if on { net.cut(i) } else { net.heal(i) }
            }
        }
    }
}

/// Kills every server (continuing a stopped one first, so that it can die).
async fn stop_all(servers: Vec<Child>) -> anyhow::Result<()> {
    for mut server in servers {
        let _ = signal("CONT", server.id().unwrap_or(0));
        server.start_kill()?;
        server.wait().await?;
    }
    Ok(())
}

fn signal(name: &str, pid: u32) -> anyhow::Result<()> {
    // The shell's builtin kill: present wherever sh is, unlike /bin/kill.
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("kill -{name} \"$1\""),
            "sh",
            &pid.to_string(),
        ])
        .status()?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

async fn site(fault: Fault) -> anyhow::Result<Option<Site>> {
    let net = match fault {
        Fault::Pause => None,
        Fault::Partition => match namespaces(2)? {
            Some(net) => Some(net),
            None => return Ok(None),
        },
    };
    Ok(Some(Site {
        net,
        _proxies: Vec::new(),
    }))
}

/// A counter's value in a server's Prometheus text, 0 when absent or unreachable.
async fn counter(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let Ok(response) = http
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
    else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a fault waits for (up to 5 s) before it strikes, so that it meets work in flight
/// however slow the machine is.
#[derive(Clone, Copy)]
enum Busy<'a> {
    /// Nothing: strike on the schedule.
    Never,
    /// The victim's outbox relay (the relay id of each server) holds a batch.
    Relays(&'a sqlx::PgPool, &'a [Uuid]),
    /// A webhook delivery is locked for an attempt (deliveries do not record their server).
    Deliveries(&'a sqlx::PgPool),
}

impl Busy<'_> {
    async fn wait(self, victim: usize) -> anyhow::Result<()> {
        let busy_by = Instant::now() + Duration::from_secs(5);
        while Instant::now() < busy_by {
            let holding: i64 = match self {
                Busy::Never => return Ok(()),
                Busy::Relays(pool, ids) => {
                    sqlx::query_scalar(
                        "SELECT count(*) FROM onephase_outbox WHERE published_at IS NULL \
                         AND claimed_by = $1 AND claimed_until > now()",
                    )
                    .bind(ids[victim])
                    .fetch_one(pool)
                    .await?
                }
                Busy::Deliveries(pool) => {
                    sqlx::query_scalar(
                        "SELECT count(*) FROM onephase_webhook_deliveries WHERE status = 'pending' \
                         AND locked_until_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint",
                    )
                    .fetch_one(pool)
                    .await?
                }
            };
            if holding > 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// Alternates the fault between the two servers, `FAULTS` times, each held a little longer
/// than a claim lasts (`hold_ms`), with some work in between, each struck once `busy` says
/// work is in flight. With [`Busy::Relays`], 1.5 s into the fault counts the rows the stopped
/// relay still holds; returns the sum.
async fn torment(
    site: &Site,
    servers: &[Child],
    fault: Fault,
    hold_ms: std::ops::Range<u64>,
    seed: u64,
    busy: Busy<'_>,
) -> anyhow::Result<i64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total = 0;
    for round in 0..FAULTS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        let victim = round % servers.len();
        let hold = Duration::from_millis(rng.random_range(hold_ms.clone()));
        busy.wait(victim).await?;
        site.hurt(fault, victim, &servers[victim], true)?;
        let probe_at = Duration::from_millis(1500);
        tokio::time::sleep(probe_at).await;
        let counted = match busy {
            Busy::Relays(pool, ids) => sqlx::query_scalar(
                "SELECT count(*) FROM onephase_outbox WHERE published_at IS NULL \
                 AND claimed_by = $1",
            )
            .bind(ids[victim])
            .fetch_one(pool)
            .await
            .map_err(anyhow::Error::from),
            Busy::Never | Busy::Deliveries(_) => Ok(0),
        };
        tokio::time::sleep(hold.saturating_sub(probe_at)).await;
        // Lifted whatever the count did: a server left stopped would outlive the test.
        site.hurt(fault, victim, &servers[victim], false)?;
        total += counted?;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Sagas

const RUNS: usize = 300;

fn saga_config(dir: &Path, i: usize, store: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("saga-{i}.toml"));
    std::fs::write(
        &path,
        format!(
            "store = \"{store}\"\n\
             [[auth.tokens]]\nname = \"torture\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
             [saga]\nlease_margin_secs = 1\npoll_interval_ms = 20\n\
             allow_networks = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n",
            onephase_server::auth::hash_token(TOKEN)
        ),
    )?;
    Ok(path)
}

#[derive(Debug, Clone)]
struct Plan {
    refuse_at: Option<&'static str>,
    stuck: Option<&'static str>,
    input: Value,
}

fn saga_plans(seed: u64) -> Vec<Plan> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..RUNS)
        .map(|order| {
            let refuse_at = match rng.random_range(0..100) {
                0..15 => Some("ship"),
                15..20 => Some("charge"),
                _ => None,
            };
            let stuck = match refuse_at {
                Some("ship") if rng.random_bool(0.1) => Some("reserve"),
                _ => None,
            };
            let mut flaky = Vec::new();
            if rng.random_bool(0.2) {
                flaky.push(("charge", "action", rng.random_range(1..3)));
            }
            if rng.random_bool(0.3) {
                flaky.push(("reserve", "compensation", rng.random_range(1..3)));
            }
            let delay = rng.random_range(0..40);
            Plan {
                refuse_at,
                stuck,
                input: order_input(
                    i64::try_from(order).unwrap_or(0),
                    refuse_at,
                    stuck,
                    &flaky,
                    delay,
                ),
            }
        })
        .collect()
}

/// POSTs `body` to the first server that answers, retrying (the same idempotency key makes a
/// repeat harmless) until one does.
async fn post_anywhere(
    http: &reqwest::Client,
    bases: &[String],
    path: &str,
    key: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0_usize;
    loop {
        let base = &bases[n % bases.len()];
        n += 1;
        let sent = http
            .post(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r) if r.status().is_client_error() => {
                bail!("{path} refused: {}", r.text().await?)
            }
            _ => {}
        }
        ensure!(
            Instant::now() < deadline,
            "no server answered {path} for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sagas_under(fault: Fault) -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let Some(mut site) = site(fault).await? else {
        return Ok(());
    };
    let participants = Participants::start().await?;
    let store_url = site.reach(db.url()).await?;
    let participants_base = site.reach(&participants.base()).await?;
    let participants_base = participants_base.trim_end_matches('/').to_owned();
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let (servers, bases) = site
        .start_pair(&http, |i| saga_config(dir.path(), i, &store_url))
        .await?;
    // Calls time out after 1.5 s: with the 1 s margin a claim lasts 2.5 s, and every fault
    // below is held longer than that.
    let definition: Value = serde_json::from_str(&order_definition(&participants_base, 1, 1500))?;
    post_anywhere(&http, &bases, "/v1/sagas", "definition", &definition).await?;

    let plans = saga_plans(0x70_27_u64);
    let starter = {
        let (http, bases, plans) = (http.clone(), bases.clone(), plans.clone());
        tokio::spawn(async move {
            let mut ids = HashMap::new();
            for (order, plan) in plans.iter().enumerate() {
                let started = post_anywhere(
                    &http,
                    &bases,
                    "/v1/sagas/order/runs",
                    &format!("order-{order}"),
                    &json!({"input": plan.input}),
                )
                .await?;
                let id = started["id"].as_str().context("id")?.to_owned();
                ids.insert(id, order);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            anyhow::Ok(ids)
        })
    };
    let started = Instant::now();
    torment(&site, &servers, fault, 3000..4500, 0x5A6A, Busy::Never).await?;
    let ids = starter.await??;
    eprintln!(
        "{fault:?}: {FAULTS} faults over {:.1} s while {RUNS} sagas ran",
        started.elapsed().as_secs_f64()
    );

    let pool = db.store().as_postgres().context("PostgreSQL")?.clone();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM onephase_saga_runs WHERE state IN ('running', 'compensating')",
        )
        .fetch_one(&pool)
        .await?;
        if active == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{active} runs still active 180 s after the faults"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let fenced: f64 = {
        let mut sum = 0.0;
        for base in &bases {
            sum += counter(&http, base, "onephase_saga_lost_claims_total").await;
        }
        sum
    };
    stop_all(servers).await?;

    let runs: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, state FROM onephase_saga_runs")
        .fetch_all(&pool)
        .await?;
    ensure!(runs.len() == RUNS, "{} runs for {RUNS} starts", runs.len());
    let mut by_state: HashMap<String, usize> = HashMap::new();
    for (id, state) in &runs {
        let order = *ids
            .get(&id.to_string())
            .context("a run no start returned")?;
        let plan = &plans[order];
        let want = match expected(plan.refuse_at, plan.stuck) {
            Expect::Completed => "completed",
            Expect::Compensated => "compensated",
            Expect::NeedsOperator => "needs_operator",
        };
        ensure!(
            state == want,
            "run {id} (order {order}, {plan:?}) is {state}, expected {want}"
        );
        *by_state.entry(state.clone()).or_default() += 1;
    }
    let taken_over: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT run_id) FROM onephase_saga_history WHERE detail LIKE '%interrupted%'",
    )
    .fetch_one(&pool)
    .await?;
    {
        let books = participants.books();
        ensure!(
            books.repeated_attempts.is_empty(),
            "{} (key, attempt) pairs were sent twice, e.g. {:?}",
            books.repeated_attempts.len(),
            books.repeated_attempts.first()
        );
        let net = books.net();
        for (order, plan) in plans.iter().enumerate() {
            let order = i64::try_from(order)?;
            let get = |service: &str| net.get(&(service.to_owned(), order)).copied().unwrap_or(0);
            let got = (get("inventory"), get("payment"), get("shipping"));
            let want = expected_books(plan.refuse_at, plan.stuck);
            ensure!(
                got == want,
                "order {order} ({plan:?}): books {got:?}, expected {want:?}"
            );
        }
        eprintln!(
            "{fault:?}: final states {by_state:?}; {taken_over} runs taken over after a claim lapsed; \
         {fenced} transitions refused by the fence; {} stale calls refused by the participants' \
         fence; {} calls overlapped a late call of the same key (absorbed by its idempotency key); \
         {} repeated requests answered from the record",
            books.stale_fenced,
            books.overlaps.len(),
            books.replays.values().sum::<u32>()
        );
        ensure!(
            taken_over > 0,
            "no fault landed while a call was in flight; the test proved nothing"
        );
    }
    db.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_hold_while_servers_are_paused_past_their_leases() -> anyhow::Result<()> {
    sagas_under(Fault::Pause).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_hold_while_servers_are_partitioned_from_the_database() -> anyhow::Result<()> {
    sagas_under(Fault::Partition).await
}

// ---------------------------------------------------------------------------------------------
// Outbox

const EVENTS: usize = 20_000;
const KEYS: usize = 200;

fn relay_config(
    dir: &Path,
    i: usize,
    source: &str,
    sink: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("relay-{i}.toml"));
    std::fs::write(
        &path,
        format!(
            "store = \"sqlite://{}\"\n\n[[outbox.relay]]\nname = \"app\"\nsource = \"{source}\"\n\
             sink = \"{sink}\"\nbatch_size = 500\nclaim_timeout_secs = 2\n",
            dir.join(format!("onephase-{i}.db")).display()
        ),
    )?;
    Ok(path)
}

async fn outbox_under(fault: Fault) -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let Some(nats) = engine_url(Engine::Nats) else {
        return Ok(());
    };
    let Some(mut site) = site(fault).await? else {
        return Ok(());
    };
    let store = db.store().clone();
    store.migrate(&[onephase_outbox::migrations()]).await?;
    outbox::create_effects(&store).await?;
    let outbox::NatsChecker { mut sub, stream } =
        outbox::NatsChecker::start(&nats, "torture", Duration::from_secs(300)).await?;
    let source = site.reach(db.url()).await?;
    let sink = site.reach(&nats).await?;
    let dir = tempfile::tempdir()?;
    let (mut servers, mut relays) = (Vec::new(), Vec::new());
    for i in 0..2 {
        let config = relay_config(dir.path(), i, &source, &sink)?;
        let listen = site.listen(i)?;
        let (server, relay) = site.spawn_relay(i, &config, &listen).await?;
        servers.push(server);
        relays.push(relay);
    }

    let events = outbox::workload(&stream.topic, EVENTS, KEYS);
    let writer = {
        let (store, events) = (store.clone(), events.clone());
        tokio::spawn(async move {
            // About 1,600 events a second for 12 s: the relays are busy through every fault.
            for chunk in events.chunks(500) {
                outbox::enqueue_all(&store, chunk, 100).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            anyhow::Ok(())
        })
    };
    let consumer = {
        let (store, events) = (store.clone(), events.clone());
        tokio::spawn(async move {
            outbox::consume_and_apply(&mut sub, &store, &events, Duration::from_secs(240)).await
        })
    };
    let started = Instant::now();
    // A claim lasts 2 s; each fault is held 2.5 to 4 s, struck while the victim holds a batch.
    // What it still holds 1.5 s in is taken over by the other relay once the claim lapses.
    let pool = store.as_postgres().context("PostgreSQL")?.clone();
    let lapsed = torment(
        &site,
        &servers,
        fault,
        2500..4000,
        0x0B0C,
        Busy::Relays(&pool, &relays),
    )
    .await?;
    eprintln!(
        "{fault:?}: {FAULTS} faults over {:.1} s while {EVENTS} events were relayed; \
         {lapsed} rows were held by a stopped relay, mid-batch, and taken over",
        started.elapsed().as_secs_f64()
    );
    writer.await??;
    let consumed = consumer.await??;
    stop_all(servers).await?;
    outbox::assert_effects_once(&store, &events).await?;
    ensure!(
        lapsed > 0,
        "no fault landed while a relay held a batch; the test proved nothing"
    );
    eprintln!(
        "{fault:?}: {} deliveries for {EVENTS} events; {} duplicates absorbed by the inbox; \
         each key's first deliveries in order",
        consumed.deliveries, consumed.duplicates
    );
    stream.delete().await?;
    db.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_holds_while_relays_are_paused_past_their_claims() -> anyhow::Result<()> {
    outbox_under(Fault::Pause).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_holds_while_relays_are_partitioned_from_the_database() -> anyhow::Result<()> {
    outbox_under(Fault::Partition).await
}

// ---------------------------------------------------------------------------------------------
// Webhooks

const MESSAGES: usize = 1500;
const PARTITION_KEYS: usize = 20;

/// What the receiver saw: every (endpoint, webhook-id) request, and the payload order per
/// (endpoint, partition key) of first deliveries.
#[derive(Default)]
struct Received {
    seen: std::collections::HashSet<(usize, String)>,
    repeats: usize,
    order: HashMap<(usize, String), Vec<u64>>,
}

type Inbox = std::sync::Arc<std::sync::Mutex<Received>>;

async fn receive(
    axum::extract::State(inbox): axum::extract::State<Inbox>,
    axum::extract::Path(endpoint): axum::extract::Path<usize>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let message: Value = serde_json::from_slice(&body).unwrap_or_default();
    {
        let mut inbox = inbox.lock().unwrap_or_else(|e| e.into_inner());
        if inbox.seen.insert((endpoint, id)) {
            let key = message["data"]["key"].as_str().unwrap_or("").to_owned();
            let n = message["data"]["n"].as_u64().unwrap_or(u64::MAX);
            inbox.order.entry((endpoint, key)).or_default().push(n);
        } else {
            inbox.repeats += 1;
        }
    }
    // Answers take a while, so that attempts are in flight when a server is stopped.
    tokio::time::sleep(Duration::from_millis((body.len() % 20) as u64)).await;
    axum::http::StatusCode::NO_CONTENT
}

fn webhook_config(dir: &Path, i: usize, store: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("webhook-{i}.toml"));
    std::fs::write(
        &path,
        format!(
            "store = \"{store}\"\n\
             [[auth.tokens]]\nname = \"torture\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
             [webhook]\nallow_networks = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n\
             schedule_secs = [0, 1, 1, 2, 2, 3, 3, 5, 5, 5]\n\
             attempt_timeout_secs = 1\nlease_margin_secs = 1\npoll_interval_ms = 50\n",
            onephase_server::auth::hash_token(TOKEN)
        ),
    )?;
    Ok(path)
}

async fn webhooks_under(fault: Fault) -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let Some(mut site) = site(fault).await? else {
        return Ok(());
    };
    let inbox = Inbox::default();
    let app = axum::Router::new()
        .route("/hooks/{endpoint}", axum::routing::post(receive))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let receiver = site.reach(&receiver).await?;
    let receiver = receiver.trim_end_matches('/').to_owned();
    let store_url = site.reach(db.url()).await?;
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let (servers, bases) = site
        .start_pair(&http, |i| webhook_config(dir.path(), i, &store_url))
        .await?;
    // Endpoint 0 is ordered (per partition key), endpoint 1 is not.
    for endpoint in 0..2 {
        post_anywhere(
            &http,
            &bases,
            "/v1/webhooks/endpoints",
            &format!("endpoint-{endpoint}"),
            &json!({"url": format!("{receiver}/hooks/{endpoint}"), "ordered": endpoint == 0}),
        )
        .await?;
    }
    let sender = {
        let (http, bases) = (http.clone(), bases.clone());
        tokio::spawn(async move {
            for n in 0..MESSAGES {
                let key = format!("k{}", n % PARTITION_KEYS);
                post_anywhere(
                    &http,
                    &bases,
                    "/v1/webhooks/messages",
                    &format!("message-{n}"),
                    &json!({"event_type": "torture", "payload": {"n": n, "key": key}, "partition_key": key}),
                )
                .await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    let started = Instant::now();
    // A delivery's lock lasts 2 s (attempt timeout + margin); each fault is held 2.5 to 4 s,
    // struck while a delivery is locked for an attempt.
    let pool = db.store().as_postgres().context("PostgreSQL")?.clone();
    torment(
        &site,
        &servers,
        fault,
        2500..4000,
        0x3EB,
        Busy::Deliveries(&pool),
    )
    .await?;
    sender.await??;
    eprintln!(
        "{fault:?}: {FAULTS} faults over {:.1} s while {MESSAGES} messages went to 2 endpoints",
        started.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (pending, other): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'pending'), \
                    count(*) FILTER (WHERE status NOT IN ('pending', 'delivered')) \
             FROM onephase_webhook_deliveries",
        )
        .fetch_one(&pool)
        .await?;
        ensure!(
            other == 0,
            "{other} deliveries neither pending nor delivered"
        );
        if pending == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{pending} deliveries still pending 180 s after the faults"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (deliveries, retried): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE attempts > 1) FROM onephase_webhook_deliveries",
    )
    .fetch_one(&pool)
    .await?;
    stop_all(servers).await?;
    ensure!(
        retried > 0,
        "no fault landed while a delivery was locked; the test proved nothing"
    );
    ensure!(
        deliveries == i64::try_from(2 * MESSAGES)?,
        "{deliveries} deliveries for {MESSAGES} messages to 2 endpoints"
    );
    {
        let inbox = inbox.lock().unwrap_or_else(|e| e.into_inner());
        ensure!(
            inbox.seen.len() == 2 * MESSAGES,
            "the receiver saw {} of {} deliveries",
            inbox.seen.len(),
            2 * MESSAGES
        );
        for ((endpoint, key), order) in &inbox.order {
            if *endpoint == 0 {
                ensure!(
                    order.windows(2).all(|w| w[0] < w[1]),
                    "ordered endpoint, key {key}: first deliveries out of order {order:?}"
                );
            }
        }
        eprintln!(
            "{fault:?}: {deliveries} deliveries all delivered; {retried} needed more than one \
         attempt; {} repeats absorbed by the receiver's dedup by webhook-id; the ordered \
         endpoint's first deliveries in order per key",
            inbox.repeats
        );
    }
    db.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_hold_while_dispatchers_are_paused_past_their_locks() -> anyhow::Result<()> {
    webhooks_under(Fault::Pause).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_hold_while_dispatchers_are_partitioned_from_the_database() -> anyhow::Result<()> {
    webhooks_under(Fault::Partition).await
}
