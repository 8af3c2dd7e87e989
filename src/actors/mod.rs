//! The actors: one unit actor per trading unit, and the dispatcher in front of
//! them. (The supervisor that tracks health comes with circuit breaking.)

pub mod call_batch;
pub mod dispatcher;
pub mod group_commit;
pub mod health;
pub mod key_lock;
pub mod supervisor;
pub mod unit;
