//! The routing table's entries as configured: units (with their operator
//! settings and database URLs) and partitions.

use serde::{Deserialize, Serialize};

use super::urls::{mask_url, mask_urls, one_or_many};

/// Operator-set availability of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnitMode {
    /// Takes creates, reads and updates.
    #[default]
    Open,
    /// No new orders; reads and updates of its orders continue.
    ReadOnly,
    /// Operator blacklist: nothing is routed to it.
    Disabled,
}

impl UnitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::ReadOnly => "read_only",
            Self::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Temperature {
    #[default]
    Hot,
    Warm,
    /// Holds old orders; takes no new ones.
    Cold,
}

/// One unit of the routing table. Its URLs may hold a password, so `Debug`
/// masks them (as every log line and error does).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSettings {
    pub id: u16,
    #[serde(default = "default_partition")]
    pub partition: String,
    #[serde(default)]
    pub mode: UnitMode,
    #[serde(default)]
    pub temperature: Temperature,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `mysql://user:pass@host:port/db` or `sqlite://path/to/file.db`.
    pub primary_url: String,
    /// Copies of the database under replication (`replica_url = "..."`
    /// for one, `replica_urls = [...]` for several).
    #[serde(default, alias = "replica_url", deserialize_with = "one_or_many")]
    pub replica_urls: Vec<String>,
}

impl std::fmt::Debug for UnitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitSettings")
            .field("id", &self.id)
            .field("partition", &self.partition)
            .field("mode", &self.mode)
            .field("temperature", &self.temperature)
            .field("weight", &self.weight)
            .field("primary_url", &mask_url(&self.primary_url))
            .field("replica_urls", &mask_urls(&self.replica_urls))
            .finish()
    }
}

fn default_partition() -> String {
    "standard".into()
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSettings {
    /// Partitions this one may spill creates into when it has no usable unit.
    #[serde(default)]
    pub spill_to: Vec<String>,
}

/// Partitions nothing may spill into: canary traffic is opt-in, cold takes no creates.
pub const NO_SPILL_INTO: [&str; 2] = ["canary", "cold"];
