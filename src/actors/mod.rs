//! The actors: one unit actor per trading unit (`unit/`), the dispatcher in
//! front of them (`dispatcher/`), and the supervisor that tracks their health
//! (`supervisor.rs`, publishing on the `HealthBoard` of `health.rs`).

pub mod dispatcher;
mod error;
pub mod health;
pub mod key_lock;
pub mod supervisor;
pub mod unit;

pub use error::EngineError;
