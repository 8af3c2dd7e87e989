//! The RPC front end: HTTP/1.1 + JSON. Thin by design: parse and validate
//! (`extract.rs`, `dto.rs`), send one message to the dispatcher, map the
//! reply (`orders.rs`, `sections.rs`, `health.rs`, `admin.rs`). `routes.rs` registers every
//! route on the public and the admin listener, `openapi.rs` describes them,
//! `error.rs` holds the error contract, `middleware.rs` what runs around
//! every request, `auth.rs` the admin token.

pub mod admin;
mod auth;
pub mod dto;
pub mod error;
pub mod extract;
mod health;
pub mod middleware;
pub mod openapi;
pub mod orders;
mod routes;
mod sections;
mod state;

pub use auth::AdminToken;
pub use routes::{configure, configure_admin};
pub use state::AppState;
