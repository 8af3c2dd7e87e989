//! Every metric the engine exports: names, labels, units and descriptions in
//! one place. Dashboards (`dashboards/*.json`) and alert rules
//! (`dashboards/alerts.yml`) read these names, so they are part of the contract.
//!
//! Conventions: prefix `orderengine_`, base units, `_total` for counters,
//! `_seconds` for durations with real histogram buckets, and bounded labels
//! only (`op`, `outcome`, `unit`, `partition`, `reason`, `state`): never order,
//! merchant or user ids. Every series a panel or rule reads is created at
//! start-up (zero for every unit), not on its first event.

use std::sync::OnceLock;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "orderengine_requests_total";
pub const REQUEST_DURATION: &str = "orderengine_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "orderengine_requests_in_flight";
pub const SHED: &str = "orderengine_admission_shed_total";
pub const UNIT_CALLS: &str = "orderengine_unit_calls_total";
pub const UNIT_CALL_DURATION: &str = "orderengine_unit_call_duration_seconds";
pub const CREATES: &str = "orderengine_creates_total";
pub const CREATE_BATCH_SIZE: &str = "orderengine_unit_create_batch_size";
pub const CREATE_RETRIES: &str = "orderengine_create_retries_total";
pub const CREATE_IN_DOUBT: &str = "orderengine_create_in_doubt_total";
pub const UNIT_UP: &str = "orderengine_unit_up";
pub const CIRCUIT_STATE: &str = "orderengine_unit_circuit_state";
pub const CIRCUIT_TRANSITIONS: &str = "orderengine_unit_circuit_transitions_total";
pub const PROBES: &str = "orderengine_unit_probes_total";
pub const PROBE_DURATION: &str = "orderengine_unit_probe_duration_seconds";
pub const POOL_CONNECTIONS: &str = "orderengine_unit_pool_connections";
pub const POOL_MAX: &str = "orderengine_unit_pool_max_connections";
pub const POOL_WAITING: &str = "orderengine_unit_pool_waiting";
pub const UNIT_RESTARTS: &str = "orderengine_unit_restarts_total";
pub const UNIT_PANICS: &str = "orderengine_unit_panics_total";
pub const SEGMENT_FETCHES: &str = "orderengine_sequence_segment_fetches_total";
pub const OUTBOX_BACKLOG: &str = "orderengine_outbox_backlog";
pub const OUTBOX_OLDEST: &str = "orderengine_outbox_oldest_unpublished_seconds";
pub const EVENTS_PUBLISHED: &str = "orderengine_events_published_total";
pub const RELAY_ERRORS: &str = "orderengine_relay_errors_total";
pub const CREATE_UNCERTAIN: &str = "orderengine_create_uncertain_total";
pub const KEY_SETTLES: &str = "orderengine_key_settles_total";
pub const ROUTING_VERSION: &str = "orderengine_routing_table_version";
pub const ROUTING_CHANGES: &str = "orderengine_routing_table_changes_total";
pub const ROUTING_STORE_UP: &str = "orderengine_routing_store_up";
pub const UNIT_WEIGHT: &str = "orderengine_unit_weight";
pub const UNIT_MODE: &str = "orderengine_unit_mode";
pub const UNIT_PARTITION: &str = "orderengine_unit_partition";
pub const UNIT_RUNNING: &str = "orderengine_unit_running";
pub const PANIC_MODE: &str = "orderengine_partition_panic_mode";
pub const PROBER_SUSPECTED: &str = "orderengine_prober_suspected";
pub const BUILD_INFO: &str = "orderengine_build_info";
pub const REPLICAS: &str = "orderengine_unit_replicas";
pub const REPLICA_UP: &str = "orderengine_unit_replica_up";
pub const REPLICA_LAG: &str = "orderengine_unit_replica_lag_seconds";
pub const EVENTUAL_READS: &str = "orderengine_eventual_reads_total";
pub const FAILOVERS: &str = "orderengine_unit_failovers_total";
pub const FAILOVER_STEPS: &str = "orderengine_unit_failover_steps_total";

/// `step` label values of failovers, in the order they run.
pub const FAILOVER_STEP_NAMES: [&str; 6] = [
    "fence_writes",
    "fence_old_primary",
    "catch_up",
    "promote",
    "repoint_replicas",
    "repoint",
];

/// `outcome` label values of routing table changes.
pub const CHANGE_OUTCOMES: [&str; 5] = ["applied", "unchanged", "refused", "conflict", "not_saved"];

/// `op` label values.
pub const OPS: [&str; 8] = [
    "create", "pay", "close", "refund", "section", "get", "lookup", "list",
];
/// `outcome` label values of requests.
pub const OUTCOMES: [&str; 5] = ["ok", "client_error", "conflict", "unavailable", "error"];
/// `outcome` label values of unit calls.
pub const UNIT_CALL_OUTCOMES: [&str; 3] = ["ok", "unavailable", "error"];
/// `reason` label values of order retries (see `CallError::reason`).
pub const RETRY_REASONS: [&str; 8] = [
    "circuit_open",
    "unavailable",
    "actor_restarted",
    "sequence_exhausted",
    "sequence_reused",
    "error",
    "in_doubt_absent",
    "blocked",
];
/// `outcome` label values of in-doubt creates.
pub const IN_DOUBT_OUTCOMES: [&str; 3] = ["found", "absent", "unresolved"];
/// `reason` label values of creates answered 503 for want of certainty.
pub const UNCERTAIN_REASONS: [&str; 2] = ["in_doubt", "no_quorum"];
/// `outcome` label values of settling another create's claim.
pub const SETTLE_OUTCOMES: [&str; 3] = ["found", "fenced", "unresolved"];

/// Latency buckets (seconds): 0.5 ms to 30 s, densest from 1 to 50 ms, where
/// a create's p50 and p99 sit under load: `histogram_quantile` interpolates
/// linearly inside a bucket, so with only 5 and 10 ms a p99 of 6 ms could
/// read as anything between.
const LATENCY_BUCKETS: [f64; 19] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder once and returns its handle (a second
/// engine in the same process, as in tests, shares it).
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(CREATE_BATCH_SIZE.to_string()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            init_requests();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(
        REPLICAS,
        Unit::Count,
        "Replicas the unit's table entry names."
    );
    describe_gauge!(
        REPLICA_UP,
        "1 while a replica of the unit answers and holds this unit's database, by unit and replica (its place in the unit's replica_urls, from 1); NaN for one the unit no longer names."
    );
    describe_gauge!(
        REPLICA_LAG,
        Unit::Seconds,
        "How far each replica of the unit is behind its primary, from the probes' heartbeats, by unit and replica (as for the up gauge)."
    );
    describe_counter!(
        EVENTUAL_READS,
        Unit::Count,
        "Eventual reads of units with a replica, by unit and the copy that served them (replica, primary)."
    );
    describe_counter!(
        FAILOVERS,
        Unit::Count,
        "Failovers of a unit's primary to its replica, by unit, mode (planned, emergency) and outcome."
    );
    describe_counter!(
        FAILOVER_STEPS,
        Unit::Count,
        "Failover steps completed, by unit and step."
    );
    describe_histogram!(
        CREATE_BATCH_SIZE,
        Unit::Count,
        "Orders written per create transaction (group commit), by unit."
    );
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "RPC requests by operation and outcome."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "RPC request latency by operation and outcome."
    );
    describe_gauge!(
        REQUESTS_IN_FLIGHT,
        Unit::Count,
        "RPC requests being served now."
    );
    describe_counter!(
        SHED,
        Unit::Count,
        "Requests refused with 429 by admission control, by reason."
    );
    describe_counter!(
        UNIT_CALLS,
        Unit::Count,
        "Calls from the dispatcher to a unit, by unit and outcome."
    );
    describe_histogram!(
        UNIT_CALL_DURATION,
        Unit::Seconds,
        "Latency of calls from the dispatcher to a unit."
    );
    describe_counter!(
        CREATES,
        Unit::Count,
        "Orders created, by the unit that took them."
    );
    describe_counter!(
        CREATE_RETRIES,
        Unit::Count,
        "Creates retried on another unit (order retry), by the reason the attempt failed."
    );
    describe_counter!(
        CREATE_IN_DOUBT,
        Unit::Count,
        "Creates whose COMMIT outcome was unknown, by how they were settled."
    );
    describe_gauge!(
        UNIT_UP,
        Unit::Count,
        "1 when the unit's circuit is closed (healthy), else 0."
    );
    describe_gauge!(
        CIRCUIT_STATE,
        Unit::Count,
        "The unit's circuit: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        CIRCUIT_TRANSITIONS,
        Unit::Count,
        "Circuit state changes, by unit and new state."
    );
    describe_counter!(
        PROBES,
        Unit::Count,
        "Synthetic-order probes, by unit and outcome."
    );
    describe_histogram!(
        PROBE_DURATION,
        Unit::Seconds,
        "Round trip of a synthetic-order probe (write, read, commit)."
    );
    describe_gauge!(
        POOL_CONNECTIONS,
        Unit::Count,
        "Open connections of the unit to its primary (pool and lanes), by state (idle, in_use)."
    );
    describe_gauge!(
        POOL_MAX,
        Unit::Count,
        "Most connections the unit may open to its primary (pool and lanes)."
    );
    describe_gauge!(
        POOL_WAITING,
        Unit::Count,
        "Calls waiting for a connection of the unit."
    );
    describe_counter!(
        UNIT_RESTARTS,
        Unit::Count,
        "Unit actor restarts after broken state or a caught panic."
    );
    describe_counter!(
        UNIT_PANICS,
        Unit::Count,
        "Panics caught in a unit actor's work (each restarts the actor)."
    );
    describe_counter!(
        SEGMENT_FETCHES,
        Unit::Count,
        "Sequence segments reserved in the unit's database, by outcome."
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        Unit::Count,
        "Outbox records of the unit not yet published: one per pay, close, refund or section update, one per create batch."
    );
    describe_gauge!(
        OUTBOX_OLDEST,
        Unit::Seconds,
        "Age of the unit's oldest unpublished event, as the process holding its relay lease sees it (0: none waits; NaN in the other processes)."
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        Unit::Count,
        "Events of the unit published by this process's relay (a republished one counts again)."
    );
    describe_counter!(
        RELAY_ERRORS,
        Unit::Count,
        "Relay rounds of the unit that failed (the events stay for the next round)."
    );
    describe_counter!(
        CREATE_UNCERTAIN,
        Unit::Count,
        "Creates answered 503 because the engine could not be sure of the key: its own create in doubt in a unit that cannot answer (in_doubt), or too few of the key's home units answered (no_quorum)."
    );
    describe_counter!(
        KEY_SETTLES,
        Unit::Count,
        "Another create's claim on a key, found at one of the key's homes and settled in the unit it names: its order found, the unit fenced against it, or no answer (unresolved)."
    );
    describe_gauge!(
        ROUTING_VERSION,
        Unit::Count,
        "The routing table's version in this process (+1 per operator change)."
    );
    describe_counter!(
        ROUTING_CHANGES,
        Unit::Count,
        "Operator changes to the routing table through the admin API, by outcome: applied, unchanged (nothing to change), refused (the table cannot take it), conflict (If-Match named an older version), not_saved."
    );
    describe_gauge!(
        ROUTING_STORE_UP,
        Unit::Count,
        "1 while this process reaches the control store the routing table is shared through (always 1 without one); at 0 it routes by its last table and refuses changes."
    );
    describe_gauge!(
        UNIT_WEIGHT,
        Unit::Count,
        "The unit's weight in the routing table (its share of creates against its partition's other units)."
    );
    describe_gauge!(
        UNIT_MODE,
        Unit::Count,
        "1 for the unit's current mode (open, read_only or disabled), 0 for the others."
    );
    describe_gauge!(
        UNIT_PARTITION,
        Unit::Count,
        "1 for the unit's current partition, 0 for the partitions it was in before."
    );
    describe_gauge!(
        UNIT_RUNNING,
        Unit::Count,
        "1 while the unit's actor runs; 0 while its database could not be opened (its calls answer 503; starting it is retried)."
    );
    describe_gauge!(
        PANIC_MODE,
        Unit::Count,
        "1 while the partition ignores health for creates (too few healthy units)."
    );
    describe_gauge!(
        PROBER_SUSPECTED,
        Unit::Count,
        "1 while every probe fails at once and the prober itself is suspected."
    );
    describe_gauge!(
        BUILD_INFO,
        Unit::Count,
        "Always 1; the version label names the running build."
    );
}

fn init_requests() {
    for op in OPS {
        for outcome in OUTCOMES {
            counter!(REQUESTS, "op" => op, "outcome" => outcome).absolute(0);
            let _ = histogram!(REQUEST_DURATION, "op" => op, "outcome" => outcome);
        }
    }
    for reason in RETRY_REASONS {
        counter!(CREATE_RETRIES, "reason" => reason).absolute(0);
    }
    for outcome in IN_DOUBT_OUTCOMES {
        counter!(CREATE_IN_DOUBT, "outcome" => outcome).absolute(0);
    }
    for reason in UNCERTAIN_REASONS {
        counter!(CREATE_UNCERTAIN, "reason" => reason).absolute(0);
    }
    for outcome in SETTLE_OUTCOMES {
        counter!(KEY_SETTLES, "outcome" => outcome).absolute(0);
    }
    for outcome in CHANGE_OUTCOMES {
        counter!(ROUTING_CHANGES, "outcome" => outcome).absolute(0);
    }
    counter!(SHED, "reason" => "in_flight").absolute(0);
    gauge!(REQUESTS_IN_FLIGHT).set(0.0);
    gauge!(PROBER_SUSPECTED).set(0.0);
}

/// Creates every per-unit series at zero, so dashboards and alerts see each
/// unit from start-up.
pub fn init_unit(unit: u16, max_connections: u32) {
    let u = unit.to_string();
    for outcome in UNIT_CALL_OUTCOMES {
        counter!(UNIT_CALLS, "unit" => u.clone(), "outcome" => outcome).absolute(0);
    }
    let _ = histogram!(UNIT_CALL_DURATION, "unit" => u.clone());
    let _ = histogram!(CREATE_BATCH_SIZE, "unit" => u.clone());
    counter!(CREATES, "unit" => u.clone()).absolute(0);
    gauge!(UNIT_UP, "unit" => u.clone()).set(1.0);
    gauge!(CIRCUIT_STATE, "unit" => u.clone()).set(0.0);
    for to in ["closed", "half_open", "open"] {
        counter!(CIRCUIT_TRANSITIONS, "unit" => u.clone(), "to" => to).absolute(0);
    }
    for outcome in ["ok", "failed"] {
        counter!(PROBES, "unit" => u.clone(), "outcome" => outcome).absolute(0);
        counter!(SEGMENT_FETCHES, "unit" => u.clone(), "outcome" => outcome).absolute(0);
    }
    let _ = histogram!(PROBE_DURATION, "unit" => u.clone());
    for state in ["idle", "in_use"] {
        gauge!(POOL_CONNECTIONS, "unit" => u.clone(), "state" => state).set(0.0);
    }
    gauge!(POOL_MAX, "unit" => u.clone()).set(f64::from(max_connections));
    gauge!(POOL_WAITING, "unit" => u.clone()).set(0.0);
    counter!(UNIT_RESTARTS, "unit" => u.clone()).absolute(0);
    counter!(UNIT_PANICS, "unit" => u.clone()).absolute(0);
    gauge!(OUTBOX_BACKLOG, "unit" => u.clone()).set(0.0);
    gauge!(OUTBOX_OLDEST, "unit" => u.clone()).set(0.0);
    counter!(EVENTS_PUBLISHED, "unit" => u.clone()).absolute(0);
    counter!(RELAY_ERRORS, "unit" => u.clone()).absolute(0);
    for served_by in ["replica", "primary"] {
        counter!(EVENTUAL_READS, "unit" => u.clone(), "served_by" => served_by).absolute(0);
    }
    for mode in ["planned", "emergency"] {
        for outcome in ["ok", "failed"] {
            counter!(FAILOVERS, "unit" => u.clone(), "mode" => mode, "outcome" => outcome)
                .absolute(0);
        }
    }
    for step in FAILOVER_STEP_NAMES {
        counter!(FAILOVER_STEPS, "unit" => u.clone(), "step" => step).absolute(0);
    }
}

/// How many replicas the unit has now; the per-replica series of replicas
/// it no longer has (it had more before) read `NaN`, so that they neither
/// alert nor draw.
pub fn set_replicas(unit: u16, replicas: usize) {
    let u = unit.to_string();
    gauge!(REPLICAS, "unit" => u.clone()).set(replicas as f64);
    for gone in replicas..crate::config::MAX_REPLICAS {
        let r = (gone + 1).to_string();
        if REPLICA_SERIES.contains(&(unit, gone)) {
            gauge!(REPLICA_UP, "unit" => u.clone(), "replica" => r.clone()).set(f64::NAN);
            gauge!(REPLICA_LAG, "unit" => u.clone(), "replica" => r).set(f64::NAN);
        }
    }
}

/// Replica series exported so far (unit, replica index).
static REPLICA_SERIES: std::sync::LazyLock<dashmap::DashSet<(u16, usize)>> =
    std::sync::LazyLock::new(dashmap::DashSet::new);

/// Publishes one replica's check (`replica`: its place in the unit's
/// list, from 0): `Some(lag)` when it answered, `None` when not.
pub fn record_replica(unit: u16, replica: usize, lag_ms: Option<i64>) {
    REPLICA_SERIES.insert((unit, replica));
    let (u, r) = (unit.to_string(), (replica + 1).to_string());
    match lag_ms {
        Some(lag) => {
            gauge!(REPLICA_UP, "unit" => u.clone(), "replica" => r.clone()).set(1.0);
            gauge!(REPLICA_LAG, "unit" => u, "replica" => r).set(lag as f64 / 1000.0);
        }
        None => gauge!(REPLICA_UP, "unit" => u, "replica" => r).set(0.0),
    }
}

pub fn init_partition(partition: &str) {
    gauge!(PANIC_MODE, "partition" => partition.to_string()).set(0.0);
}

/// A unit's hot-path metric handles, registered once: recording through a
/// handle skips the label allocation and registry look-up of the macros.
#[derive(Clone)]
pub struct UnitCallMetrics {
    pub ok: metrics::Counter,
    pub unavailable: metrics::Counter,
    pub error: metrics::Counter,
    pub duration: metrics::Histogram,
    /// Orders created in the unit.
    pub creates: metrics::Counter,
}

impl UnitCallMetrics {
    pub fn new(unit: u16) -> Self {
        let u = unit.to_string();
        Self {
            ok: counter!(UNIT_CALLS, "unit" => u.clone(), "outcome" => "ok"),
            unavailable: counter!(UNIT_CALLS, "unit" => u.clone(), "outcome" => "unavailable"),
            error: counter!(UNIT_CALLS, "unit" => u.clone(), "outcome" => "error"),
            duration: histogram!(UNIT_CALL_DURATION, "unit" => u.clone()),
            creates: counter!(CREATES, "unit" => u),
        }
    }
}

/// The `op` label of a route, or `None` for routes that are not order calls.
pub fn op_of(method: &str, pattern: &str) -> Option<&'static str> {
    Some(match (method, pattern) {
        ("POST", "/v1/orders") => "create",
        ("GET", "/v1/orders/{order_id}") => "get",
        ("POST", "/v1/orders/{order_id}/pay") => "pay",
        ("POST", "/v1/orders/{order_id}/close") => "close",
        ("POST", "/v1/orders/{order_id}/refunds") => "refund",
        ("GET", "/v1/orders/{order_id}/refunds") => "list",
        ("PUT" | "DELETE", "/v1/orders/{order_id}/sections/{section}") => "section",
        ("GET", "/v1/merchants/{merchant_id}/orders/{out_trade_no}") => "lookup",
        ("GET", "/v1/users/{user_id}/orders") => "list",
        _ => return None,
    })
}

/// The `outcome` label of an HTTP status.
pub fn outcome_of(status: u16) -> &'static str {
    match status {
        200..=399 => "ok",
        409 | 412 => "conflict",
        429 | 503 => "unavailable",
        400..=499 => "client_error",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_and_outcome_is_listed() {
        let routes = [
            ("POST", "/v1/orders"),
            ("GET", "/v1/orders/{order_id}"),
            ("POST", "/v1/orders/{order_id}/pay"),
            ("POST", "/v1/orders/{order_id}/close"),
            ("POST", "/v1/orders/{order_id}/refunds"),
            ("GET", "/v1/orders/{order_id}/refunds"),
            ("PUT", "/v1/orders/{order_id}/sections/{section}"),
            ("GET", "/v1/merchants/{merchant_id}/orders/{out_trade_no}"),
            ("GET", "/v1/users/{user_id}/orders"),
        ];
        let mut ops: Vec<_> = routes.iter().filter_map(|(m, p)| op_of(m, p)).collect();
        ops.sort();
        ops.dedup();
        let mut listed = OPS.to_vec();
        listed.sort();
        assert_eq!(ops, listed);
        for status in 100..600 {
            assert!(OUTCOMES.contains(&outcome_of(status)), "{status}");
        }
    }

    #[test]
    fn latency_buckets_resolve_where_creates_live() {
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        // The alert rules compare a p99 with 250 ms.
        assert!(LATENCY_BUCKETS.contains(&0.25));
        // From 2 to 50 ms (a create's p50 and p99 under load) no bucket spans
        // more than 1.67x, so an interpolated quantile is off by less than that.
        let dense = LATENCY_BUCKETS
            .windows(2)
            .filter(|w| w[0] >= 0.002 && w[1] <= 0.05);
        assert_eq!(dense.clone().count(), 8);
        for w in dense {
            assert!(w[1] / w[0] <= 1.67, "{w:?}");
        }
    }

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(op_of("POST", "/v1/orders"), Some("create"));
        assert_eq!(op_of("GET", "/v1/users/{user_id}/orders"), Some("list"));
        assert_eq!(op_of("GET", "/metrics"), None);
        for (status, outcome) in [
            (201, "ok"),
            (409, "conflict"),
            (412, "conflict"),
            (404, "client_error"),
            (503, "unavailable"),
            (429, "unavailable"),
            (500, "error"),
        ] {
            assert_eq!(outcome_of(status), outcome);
        }
        for op in OPS {
            assert!(op.chars().all(|c| c.is_ascii_lowercase()));
        }
    }
}
