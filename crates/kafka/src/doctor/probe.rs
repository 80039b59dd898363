//! Reads a group from a live cluster: the admin requests every Kafka-compatible broker is
//! asked for, through librdkafka.
//!
//! | what | request | librdkafka call |
//! |---|---|---|
//! | groups | ListGroups | `rd_kafka_list_groups` (no group) |
//! | state, members, assignments | DescribeGroups | `rd_kafka_list_groups` (one group) |
//! | partitions of a topic | Metadata | `rd_kafka_metadata` |
//! | committed offsets | OffsetFetch | `rd_kafka_committed`, from a client with the group's id that never joins |
//! | log end | ListOffsets and Fetch | `rd_kafka_query_watermark_offsets`, and the high watermark of a Fetch response (librdkafka's statistics) |
//! | time of the oldest waiting message | Fetch | one record read at the committed offset |
//!
//! Where a broker leaves an answer empty (no member assignment, no group list), the doctor
//! works with what it has; docs/kafka.md lists what each broker it was tested on answers.
//! The log end is taken from a Fetch response too because one of them (tansu 0.6) answers
//! ListOffsets with the base offset of the last *batch* plus one: the messages after it in
//! that batch would be invisible lag.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList};

use crate::KafkaError;
use crate::assignment;
use crate::diagnosis::{Member, Observation, Reading, TopicPartition};

/// A connection to a cluster for reading groups. Its calls block: run them on a blocking
/// thread (the [`Doctor`](super::Doctor) does).
#[derive(derive_more::Debug)]
pub struct Probe {
    brokers: String,
    timeout: Duration,
    #[debug(skip)]
    meta: BaseConsumer,
    /// One client per group, with the group's id, to read its committed offsets.
    #[debug(skip)]
    offsets: Mutex<HashMap<String, BaseConsumer>>,
    /// Reads the message at a committed offset for its timestamp.
    #[debug(skip)]
    peek: Mutex<BaseConsumer>,
    /// Fetches from each listed end, for the high watermarks in the answers.
    #[debug(skip)]
    tail: Mutex<BaseConsumer<Watermarks>>,
    /// Timestamps already read, by partition and offset.
    heads: Mutex<HashMap<(TopicPartition, i64), Option<i64>>>,
}

/// High watermarks by topic and partition, each with the round it was reported in.
type Reported = HashMap<(String, i32), (u64, i64)>;

/// Collects the high watermarks librdkafka's statistics report, with the round they came in.
#[derive(Default)]
struct Watermarks {
    seen: Mutex<(u64, Reported)>,
}

impl Watermarks {
    /// Starts a new round: only statistics after this count as fresh.
    fn reset(&self) -> u64 {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.0 += 1;
        seen.0
    }

    /// The high watermarks reported in round `round`.
    fn high_watermarks(&self, round: u64) -> HashMap<(String, i32), i64> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.1
            .iter()
            .filter(|(_, (r, _))| *r == round)
            .map(|(k, (_, hi))| (k.clone(), *hi))
            .collect()
    }
}

impl ClientContext for Watermarks {
    fn stats(&self, statistics: Statistics) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let round = seen.0;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.hi_offset >= 0 && p.fetch_state == "active" {
                    seen.1
                        .insert((topic.clone(), *partition), (round, p.hi_offset));
                }
            }
        }
    }
}

impl ConsumerContext for Watermarks {}

fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    config
}

impl Probe {
    /// Connects to `brokers`; each request waits at most `timeout`.
    pub fn connect(brokers: &str, timeout: Duration) -> Result<Self, KafkaError> {
        if brokers.trim().is_empty() {
            return Err(KafkaError::Config(
                "no brokers given: pass HOST:PORT[,HOST:PORT]".into(),
            ));
        }
        let meta: BaseConsumer = client(brokers)
            .create()
            .map_err(|e| KafkaError::client("connecting", e))?;
        // Prove the brokers answer now, so that a typo is one clear error.
        meta.fetch_metadata(None, timeout)
            .map_err(|e| KafkaError::client(format!("reading metadata from {brokers}"), e))?;
        let peek: BaseConsumer = client(brokers)
            .set("group.id", "onephase-doctor-peek")
            .create()
            .map_err(|e| KafkaError::client("connecting", e))?;
        let tail: BaseConsumer<Watermarks> = client(brokers)
            .set("group.id", "onephase-doctor-tail")
            .set("statistics.interval.ms", "50")
            .set("fetch.wait.max.ms", "20")
            .create_with_context(Watermarks::default())
            .map_err(|e| KafkaError::client("connecting", e))?;
        Ok(Self {
            brokers: brokers.to_owned(),
            timeout,
            meta,
            offsets: Mutex::default(),
            peek: Mutex::new(peek),
            tail: Mutex::new(tail),
            heads: Mutex::default(),
        })
    }

    /// The groups the brokers list.
    pub fn groups(&self) -> Result<Vec<String>, KafkaError> {
        let list = self
            .meta
            .fetch_group_list(None, self.timeout)
            .map_err(|e| KafkaError::client("listing groups", e))?;
        let mut names: Vec<String> = list.groups().iter().map(|g| g.name().to_owned()).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Reads `group` now. `topics` adds topics to read beyond those its members own; with none
    /// known, every topic where the group has a committed offset is read.
    pub fn observe(
        &self,
        group: &str,
        topics: &[String],
        at_ms: i64,
    ) -> Result<Observation, KafkaError> {
        let (state, members) = self.describe(group)?;
        let mut wanted: BTreeSet<String> = topics.iter().cloned().collect();
        for m in &members {
            wanted.extend(m.partitions.iter().map(|tp| tp.topic.clone()));
        }
        let discover = wanted.is_empty();
        let metadata = self
            .meta
            .fetch_metadata(None, self.timeout)
            .map_err(|e| KafkaError::client("reading metadata", e))?;
        let mut tpl = TopicPartitionList::new();
        for topic in metadata.topics() {
            let name = topic.name();
            if name.starts_with("__") || !(discover || wanted.contains(name)) {
                continue;
            }
            for p in topic.partitions() {
                tpl.add_partition(name, p.id());
            }
        }
        let committed = self.committed(group, &tpl)?;
        let with_commits: BTreeSet<String> = committed
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(tp, _)| tp.topic.clone())
            .collect();
        let mut listed = Vec::new();
        for (tp, committed) in committed {
            if !(wanted.contains(&tp.topic) || with_commits.contains(&tp.topic)) {
                continue;
            }
            let (_, end) = self
                .meta
                .fetch_watermarks(&tp.topic, tp.partition, self.timeout)
                .map_err(|e| KafkaError::client(format!("reading the end of {tp}"), e))?;
            listed.push((tp, committed, end));
        }
        let ends = self.confirm_ends(&listed);
        let mut partitions = BTreeMap::new();
        let mut waiting = Vec::new();
        for ((tp, committed, _), end) in listed.into_iter().zip(ends) {
            if let Some(c) = committed
                && c < end
            {
                waiting.push((tp.clone(), c));
            }
            partitions.insert(
                tp,
                Reading {
                    committed,
                    end,
                    waiting_since_ms: None,
                },
            );
        }
        for (tp, ts) in self.heads(&waiting) {
            if let Some(r) = partitions.get_mut(&tp) {
                r.waiting_since_ms = ts;
            }
        }
        Ok(Observation {
            at_ms,
            state,
            members,
            partitions,
        })
    }

    /// The log end of each partition: the larger of the listed end and the high watermark a
    /// Fetch response reports. Every Fetch response carries the partition's high watermark,
    /// whatever offset was asked for; librdkafka's statistics pass it on.
    fn confirm_ends(&self, listed: &[(TopicPartition, Option<i64>, i64)]) -> Vec<i64> {
        let mut ends: Vec<i64> = listed.iter().map(|(_, _, end)| *end).collect();
        if listed.is_empty() {
            return ends;
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = tail.context().reset();
        let mut tpl = TopicPartitionList::new();
        for (tp, _, end) in listed {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*end));
        }
        if let Err(e) = tail.assign(&tpl) {
            tracing::debug!(%e, "reading high watermarks failed");
            return ends;
        }
        let rounds = (self.timeout.min(Duration::from_secs(3)).as_millis() / 50).max(1);
        for _ in 0..rounds {
            let _ = tail.poll(Duration::from_millis(50));
            let seen = tail.context().high_watermarks(fresh);
            if listed
                .iter()
                .all(|(tp, _, _)| seen.contains_key(&(tp.topic.clone(), tp.partition)))
            {
                break;
            }
        }
        let seen = tail.context().high_watermarks(fresh);
        for (i, (tp, _, _)) in listed.iter().enumerate() {
            if let Some(hi) = seen.get(&(tp.topic.clone(), tp.partition)) {
                ends[i] = ends[i].max(*hi);
            }
        }
        let _ = tail.unassign();
        ends
    }

    fn describe(&self, group: &str) -> Result<(String, Vec<Member>), KafkaError> {
        let list = self
            .meta
            .fetch_group_list(Some(group), self.timeout)
            .map_err(|e| KafkaError::client(format!("describing group {group}"), e))?;
        let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
            return Ok(("Unknown".to_owned(), Vec::new()));
        };
        let members = info
            .members()
            .iter()
            .map(|m| Member {
                id: m.id().to_owned(),
                client_id: m.client_id().to_owned(),
                host: m.client_host().to_owned(),
                partitions: m
                    .assignment()
                    .map(|a| {
                        assignment::parse(a).unwrap_or_else(|e| {
                            tracing::debug!(%e, member = m.id(), "unreadable assignment");
                            Vec::new()
                        })
                    })
                    .unwrap_or_default(),
            })
            .collect();
        Ok((info.state().to_owned(), members))
    }

    fn committed(
        &self,
        group: &str,
        tpl: &TopicPartitionList,
    ) -> Result<Vec<(TopicPartition, Option<i64>)>, KafkaError> {
        if tpl.count() == 0 {
            return Ok(Vec::new());
        }
        let mut clients = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        if !clients.contains_key(group) {
            let client: BaseConsumer = client(&self.brokers)
                .set("group.id", group)
                .create()
                .map_err(|e| KafkaError::client("connecting", e))?;
            clients.insert(group.to_owned(), client);
        }
        let Some(client) = clients.get(group) else {
            return Ok(Vec::new());
        };
        let offsets = client
            .committed_offsets(tpl.clone(), self.timeout)
            .map_err(|e| KafkaError::client(format!("reading the offsets of group {group}"), e))?;
        Ok(offsets
            .elements()
            .iter()
            .map(|e| {
                let committed = match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                };
                (TopicPartition::new(e.topic(), e.partition()), committed)
            })
            .collect())
    }

    /// The timestamps of the messages at the given offsets (cached: a stuck partition's head
    /// is read once).
    fn heads(&self, waiting: &[(TopicPartition, i64)]) -> Vec<(TopicPartition, Option<i64>)> {
        let mut cache = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        let missing: Vec<_> = waiting
            .iter()
            .filter(|(tp, o)| !cache.contains_key(&(tp.clone(), *o)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            for (tp, ts) in self.read_heads(&missing) {
                cache.insert(tp, ts);
            }
        }
        if cache.len() > 10_000 {
            cache.clear();
        }
        waiting
            .iter()
            .map(|(tp, o)| (tp.clone(), cache.get(&(tp.clone(), *o)).copied().flatten()))
            .collect()
    }

    fn read_heads(
        &self,
        missing: &[(TopicPartition, i64)],
    ) -> Vec<((TopicPartition, i64), Option<i64>)> {
        let peek = self.peek.lock().unwrap_or_else(|e| e.into_inner());
        let mut tpl = TopicPartitionList::new();
        for (tp, offset) in missing {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset));
        }
        let mut found: HashMap<(TopicPartition, i64), Option<i64>> = missing
            .iter()
            .map(|(tp, o)| ((tp.clone(), *o), None))
            .collect();
        if let Err(e) = peek.assign(&tpl) {
            tracing::debug!(%e, "reading waiting messages failed");
            return found.into_iter().collect();
        }
        let mut left: BTreeSet<(TopicPartition, i64)> = missing.iter().cloned().collect();
        // A bounded wait (at most 2 s of polls): a figure on a report, not worth holding the
        // round for.
        let rounds = (self.timeout.min(Duration::from_secs(2)).as_millis() / 100).max(1);
        for _ in 0..rounds {
            if left.is_empty() {
                break;
            }
            match peek.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let tp = TopicPartition::new(m.topic(), m.partition());
                    let key = left
                        .iter()
                        .find(|(t, o)| *t == tp && *o <= m.offset())
                        .cloned();
                    if let Some(key) = key {
                        left.remove(&key);
                        found.insert(key, m.timestamp().to_millis());
                    }
                }
                Some(Err(e)) => tracing::debug!(%e, "reading a waiting message"),
                None => {}
            }
        }
        let _ = peek.unassign();
        found.into_iter().collect()
    }
}
