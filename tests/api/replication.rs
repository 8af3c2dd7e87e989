//! The harness's MariaDB replication, for the replica and failover work:
//! a primary and a replica on GTID replication, semi-synchronous with the
//! fallback to asynchronous pushed out of reach, so that a commit the
//! primary acknowledged is on the replica (`MASTER_GTID_WAIT` there sees
//! it at once).

use sqlx::{MySqlPool, Row};

use crate::mariadb::MariaDb;

/// A primary (server id 1) and its semi-synchronous replica (server id 2).
pub fn primary_and_replica() -> (MariaDb, MariaDb) {
    let primary = MariaDb::start_with_options(&[
        "--log-bin=mysql-bin",
        "--server-id=1",
        "--binlog-format=ROW",
        "--gtid-strict-mode=1",
        "--rpl-semi-sync-master-enabled=1",
        // Never fall back to asynchronous (as Vitess runs it): a commit
        // waits for the replica instead.
        "--rpl-semi-sync-master-timeout=3600000",
        "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
    ]);
    let replica = MariaDb::start_with_options(&[
        "--log-bin=mysql-bin",
        "--server-id=2",
        "--binlog-format=ROW",
        "--gtid-strict-mode=1",
        "--log-slave-updates",
        "--rpl-semi-sync-slave-enabled=1",
    ]);
    (primary, replica)
}

async fn pool(server: &MariaDb) -> MySqlPool {
    MySqlPool::connect(&format!("mysql://root@127.0.0.1:{}/mysql", server.port()))
        .await
        .unwrap()
}

#[actix_web::test]
async fn an_acknowledged_commit_is_on_the_semi_sync_replica() {
    let (primary, replica) = primary_and_replica();
    let (p, r) = (pool(&primary).await, pool(&replica).await);
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', MASTER_USE_GTID=slave_pos",
        primary.port()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(change))
        .execute(&r)
        .await
        .unwrap();
    sqlx::raw_sql("START SLAVE").execute(&r).await.unwrap();
    // The replica's IO thread connects: the primary sees a semi-sync client.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let row = sqlx::query("SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")
            .fetch_one(&p)
            .await
            .unwrap();
        if row.get::<String, _>(1) == "1" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    sqlx::raw_sql("CREATE DATABASE repl; CREATE TABLE repl.t (id INT PRIMARY KEY); INSERT INTO repl.t VALUES (1), (2)")
        .execute(&p)
        .await
        .unwrap();
    let pos: String = sqlx::query("SELECT @@gtid_binlog_pos AS pos")
        .fetch_one(&p)
        .await
        .unwrap()
        .get("pos");
    // Semi-sync acknowledged it: the replica has it (applied within the wait).
    let waited: i64 = sqlx::query("SELECT MASTER_GTID_WAIT(?, 10) AS w")
        .bind(&pos)
        .fetch_one(&r)
        .await
        .unwrap()
        .get("w");
    assert_eq!(waited, 0, "the replica did not reach {pos}");
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM repl.t")
        .fetch_one(&r)
        .await
        .unwrap()
        .get("n");
    assert_eq!(n, 2);
    let yes: String = sqlx::query("SHOW STATUS LIKE 'Rpl_semi_sync_master_yes_tx'")
        .fetch_one(&p)
        .await
        .unwrap()
        .get(1);
    assert!(
        yes.parse::<u64>().unwrap() >= 1,
        "no commit waited for the replica: {yes}"
    );
}
