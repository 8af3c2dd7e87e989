//! order-engine: an actor-based order engine built on trading units.
//!
//! Path of a request: `api` (HTTP -> typed command) -> `actors::dispatcher`
//! (choose or parse the unit) -> `actors::unit` (one per trading unit) ->
//! `storage` (that unit's own database). Pure rules live in `domain`.
//! Imports run that way only (`tests/architecture.rs` checks it): `domain`
//! imports none of the others; `config`, `metrics`, `fault` and `telemetry`
//! only `domain` and each other; and `startup` wires everything. `cli` is
//! the operator's client of the admin API.

pub mod actors;
pub mod api;
pub mod cli;
pub mod config;
pub mod domain;
#[doc(hidden)]
pub mod fault;
pub mod metrics;
pub mod relay;
pub mod startup;
pub mod storage;
pub mod telemetry;
