//! Integration tests: the real engine over HTTP on loopback, against real
//! MariaDB servers started by the harness (see `mariadb.rs`) and SQLite.

mod binary;
mod concurrency;
mod contract;
mod control_store;
mod events;
mod events_nats;
mod failover;
mod failover_replicas;
mod faults;
mod group_commit;
mod helpers;
mod lifecycle;
mod mariadb;
mod nats;
mod openapi_fuzz;
mod panic_mode;
mod process;
mod proxy;
mod replication;
mod repoint;
mod retry;
mod routing_table;
mod schedule;
mod sections;
mod storage_suite;
