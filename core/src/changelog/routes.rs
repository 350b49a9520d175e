//! Where each table's changelog lives: its cluster and generation, and the generations it
//! left when it moved (docs/rfcs/0004-kafka-clusters-and-move-changelog.md).
//!
//! A table's changelog is addressed everywhere by its *logical* topic (the table property
//! `unitable.changelog.topic`, e.g. `unitable.shop.orders`). Generation 0 is that topic on the
//! table's first cluster; each move opens generation g+1 as the topic `<logical>.g<g+1>` on the
//! target cluster and closes generation g at per-partition end offsets. Positions are
//! [`Offset::of_generation`], so they keep growing across moves and every offset a snapshot
//! summary, a STREAM cursor or a consumer group holds stays valid.
//!
//! The routes are table metadata (properties), and every component derives a table's
//! definition from metadata through [`crate::table::TableDef::from_iceberg`], which records the
//! route here. This registry is therefore process-wide state fed by the catalog, not
//! configuration: the [`super::RoutedChangelog`] reads it, so that code holding only a topic
//! name (the [`super::Changelog`] seam) reaches the right cluster and generation. A route only
//! ever moves forward (newer metadata, by its `last-updated-ms`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, RwLock};

use serde::{Deserialize, Serialize};

use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId, PartitionOffsets};

/// A generation a table's changelog has left: its records are read up to `end` and never
/// written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedGeneration {
    /// The generation number.
    pub generation: u32,
    /// The cluster it lives on (`None`: the server's default cluster).
    pub cluster: Option<String>,
    /// Per partition, the Kafka offset (exclusive) its records end at.
    pub end: PartitionOffsets,
}

#[derive(Serialize, Deserialize)]
struct ClosedGenerationJson {
    generation: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    end: String,
}

/// The text of the `unitable.changelog.history` property.
pub fn history_text(history: &[ClosedGeneration]) -> String {
    let items: Vec<ClosedGenerationJson> = history
        .iter()
        .map(|g| ClosedGenerationJson {
            generation: g.generation,
            cluster: g.cluster.clone(),
            end: g.end.to_string(),
        })
        .collect();
    serde_json::to_string(&items).unwrap_or_default()
}

/// Parses the `unitable.changelog.history` property; the error says what is wrong.
pub fn parse_history(text: &str) -> Result<Vec<ClosedGeneration>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<ClosedGenerationJson> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON list of generations: {e}"))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        if item.generation as usize != i {
            return Err(format!(
                "entry {i} is generation {}; generations must be listed from 0 on",
                item.generation
            ));
        }
        let end = item
            .end
            .parse::<PartitionOffsets>()
            .map_err(|e| format!("generation {i}: {e}"))?;
        out.push(ClosedGeneration {
            generation: item.generation,
            cluster: item.cluster,
            end,
        });
    }
    Ok(out)
}

/// The Kafka topic of generation `generation` of the logical topic `logical`.
pub fn physical_topic(logical: &TopicName, generation: u32) -> TopicName {
    if generation == 0 {
        logical.clone()
    } else {
        TopicName::new(format!("{logical}.g{generation}"))
    }
}

/// Where a table's changelog is now and where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The Iceberg table uuid (a table dropped and created again has a new one).
    pub table_uuid: String,
    /// The metadata's `last-updated-ms`: a newer route replaces an older one, never the reverse.
    pub version: i64,
    /// The current generation's cluster (`None`: the server's default cluster).
    pub cluster: Option<String>,
    /// The current generation.
    pub generation: u32,
    /// While a move is under way, the cluster it goes to; writes wait until it is done.
    pub moving: Option<String>,
    /// The generations left, oldest first (entry g is generation g).
    pub history: Vec<ClosedGeneration>,
}

/// One stretch of a partition's records on one Kafka topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The generation.
    pub generation: u32,
    /// Its cluster (`None`: the server's default cluster).
    pub cluster: Option<String>,
    /// Its Kafka topic.
    pub topic: TopicName,
    /// The first Kafka offset of the stretch.
    pub from: i64,
    /// The Kafka offset (exclusive) it ends at; `None` for the current generation, which grows.
    pub end: Option<i64>,
}

impl Route {
    /// The closed generation `generation`, if the table has left it.
    pub fn closed(&self, generation: u32) -> Option<&ClosedGeneration> {
        self.history.get(generation as usize)
    }

    /// The cluster of generation `generation` (`None` inside: the default cluster); `None`
    /// when the table has no such generation.
    pub fn cluster_of(&self, generation: u32) -> Option<Option<&str>> {
        if generation == self.generation {
            Some(self.cluster.as_deref())
        } else {
            self.closed(generation).map(|g| g.cluster.as_deref())
        }
    }

    /// Where the records of `partition` from position `from` on are: the rest of `from`'s
    /// generation, then every later generation from its start.
    pub fn segments(
        &self,
        logical: &TopicName,
        partition: PartitionId,
        from: Offset,
    ) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut physical = from.physical();
        for generation in from.generation()..=self.generation {
            let segment = Segment {
                generation,
                cluster: self.cluster_of(generation).flatten().map(str::to_string),
                topic: physical_topic(logical, generation),
                from: physical,
                end: self.closed(generation).map(|g| g.end.get(partition).0),
            };
            if segment.end.is_none_or(|end| segment.from < end) {
                out.push(segment);
            }
            physical = 0;
        }
        out
    }

    /// The position of Kafka offset `physical` of `partition` on the Kafka topic `topic`;
    /// `None` when the topic is none of the table's generations. A Kafka offset at or past a
    /// closed generation's end is the start of the next generation.
    pub fn position_of(
        &self,
        logical: &TopicName,
        topic: &str,
        partition: PartitionId,
        physical: i64,
    ) -> Option<Offset> {
        let generation =
            (0..=self.generation).find(|g| physical_topic(logical, *g).as_str() == topic)?;
        match self.closed(generation) {
            Some(closed) if physical >= closed.end.get(partition).0 => {
                Some(Offset::of_generation(generation + 1, 0))
            }
            _ => Some(Offset::of_generation(generation, physical)),
        }
    }

    /// The positions `offsets` as Kafka positions per cluster and topic, for snapshot
    /// summaries and operators: `CLUSTER/TOPIC@P:O,...` joined by `;`, generations ascending
    /// (`default` names the server's default cluster).
    pub fn describe_positions(&self, logical: &TopicName, offsets: &PartitionOffsets) -> String {
        let mut by_generation: std::collections::BTreeMap<u32, PartitionOffsets> =
            Default::default();
        for (p, o) in &offsets.0 {
            by_generation
                .entry(o.generation())
                .or_default()
                .set(*p, Offset(o.physical()));
        }
        let mut out = String::new();
        for (generation, physical) in by_generation {
            if !out.is_empty() {
                out.push(';');
            }
            let cluster = self.cluster_of(generation).flatten().unwrap_or("default");
            let _ = write!(
                out,
                "{cluster}/{}@{physical}",
                physical_topic(logical, generation)
            );
        }
        out
    }
}

static ROUTES: LazyLock<RwLock<HashMap<TopicName, Arc<Route>>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// Records the route of the logical topic `topic`, unless a newer one is known.
pub fn observe(topic: &TopicName, route: Route) {
    if let Ok(routes) = ROUTES.read()
        && routes
            .get(topic)
            .is_some_and(|known| known.version >= route.version)
    {
        return;
    }
    let mut routes = ROUTES.write().unwrap_or_else(|e| e.into_inner());
    match routes.get(topic) {
        Some(known) if known.version >= route.version => {}
        _ => {
            routes.insert(topic.clone(), Arc::new(route));
        }
    }
}

/// Records the route of `topic` whatever is known (a table being created: an older table of
/// the same name may have left its route).
pub fn replace(topic: &TopicName, route: Route) {
    ROUTES
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(topic.clone(), Arc::new(route));
}

/// The newest known route of the logical topic `topic`.
pub fn route(topic: &TopicName) -> Option<Arc<Route>> {
    ROUTES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(topic)
        .cloned()
}

/// Forgets the route of `topic` (its table was dropped).
pub fn forget(topic: &TopicName) {
    ROUTES
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(topic);
}

/// Keeps this process's routes current: every `every`, each known table's metadata pointer is
/// read, and a table whose pointer moved is loaded again (which records its route). Readers
/// that hold no fresh metadata of their own (a STREAM following a table for hours, on a node
/// that does not commit it) thus see a move's switch within `every`. Runs until `stop`.
pub async fn follow(
    catalog: crate::catalog::TableCatalog,
    committer: crate::commit::committer::Committer,
    every: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut seen: HashMap<TopicName, Option<String>> = HashMap::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let tables: Vec<TopicName> = ROUTES
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, r)| !r.table_uuid.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        seen.retain(|t, _| tables.contains(t));
        for topic in tables {
            let Some(name) = topic
                .as_str()
                .strip_prefix("unitable.")
                .and_then(|n| n.parse::<crate::naming::TableName>().ok())
            else {
                continue;
            };
            let Ok(location) = committer.current_metadata_location(&name).await else {
                continue;
            };
            if seen.get(&topic) == Some(&location) {
                continue;
            }
            if location.is_some()
                && let Ok(table) = catalog.load(&name).await
            {
                // Deriving the definition records the route.
                let _ = crate::table::TableDef::from_iceberg(name, table.metadata());
            }
            seen.insert(topic, location);
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
