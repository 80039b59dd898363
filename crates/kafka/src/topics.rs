//! Topics the runtime needs: created when missing.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::KafkaError;

/// Creates each of `topics` with one partition if it does not exist.
pub(crate) async fn ensure(
    brokers: &str,
    topics: impl Iterator<Item = String>,
) -> Result<(), KafkaError> {
    let names: Vec<String> = topics.collect();
    if names.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| KafkaError::client("creating the admin client", e))?;
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .map_err(|e| KafkaError::client("creating the dead-letter topics", e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Config(format!(
                    "the dead-letter topic {name} could not be created ({code}); create it, or \
                     choose another suffix"
                )));
            }
        }
    }
    Ok(())
}
