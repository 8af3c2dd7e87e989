//! Replication positions and consistency tokens (read-your-writes).
//!
//! A MariaDB position is a list of GTIDs `domain-server-seq`, one per
//! replication domain. Within a domain, sequence numbers only grow in binlog
//! order (`gtid_strict_mode`), so a replica has applied a transaction once
//! its position in that domain reaches the transaction's sequence number:
//! what `MASTER_GTID_WAIT` waits for.
//!
//! A write answers a token naming its unit and a position at or past its
//! commit; a read that presents the token is served by a replica of that
//! unit only once the replica has applied the position. A token without a
//! position (the write committed nothing new here, or the unit has no
//! replica to ask) sends such a read to the primary.

use std::fmt;

/// One GTID: `domain-server-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

/// A replication position: at most one GTID per domain, sorted by domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position(Vec<Gtid>);

impl Position {
    /// Parses MariaDB's form (`@@last_gtid`, `@@gtid_binlog_pos`):
    /// GTIDs separated by commas; empty text is the empty position.
    pub fn parse(text: &str) -> Option<Self> {
        let mut position = Self::default();
        for gtid in gtids(text) {
            position.advance(gtid?);
        }
        Some(position)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes `gtid` in: its domain's sequence becomes the larger of the two.
    pub fn advance(&mut self, gtid: Gtid) {
        match self.0.binary_search_by_key(&gtid.domain, |g| g.domain) {
            Ok(i) if self.0[i].seq < gtid.seq => self.0[i] = gtid,
            Ok(_) => {}
            Err(i) => self.0.insert(i, gtid),
        }
    }

    /// Takes every GTID of `other` in.
    pub fn merge(&mut self, other: &Position) {
        for g in &other.0 {
            self.advance(*g);
        }
    }

    /// Whether a server at this position has applied everything `other` names.
    pub fn covers(&self, other: &Position) -> bool {
        other.0.iter().all(|g| {
            self.0
                .iter()
                .any(|mine| mine.domain == g.domain && mine.seq >= g.seq)
        })
    }
}

/// Of servers that received `positions`, the first whose position covers
/// every other's: the one to promote, since it holds everything any of them
/// received. `None` when no one covers all (they diverged) or there are none.
pub fn most_advanced(positions: &[&Position]) -> Option<usize> {
    positions
        .iter()
        .position(|p| positions.iter().all(|other| p.covers(other)))
}

/// The GTIDs of MariaDB's comma-separated form (`None` for one unreadable).
fn gtids(text: &str) -> impl Iterator<Item = Option<Gtid>> + '_ {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let mut fields = part.splitn(3, '-');
            Some(Gtid {
                domain: fields.next()?.parse().ok()?,
                server: fields.next()?.parse().ok()?,
                seq: fields.next()?.parse().ok()?,
            })
        })
}

/// A server's `@@gtid_binlog_state`: the last GTID it logged of each
/// domain and server (several per domain, where `Position` keeps one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BinlogState(Vec<Gtid>);

impl BinlogState {
    pub fn parse(text: &str) -> Option<Self> {
        gtids(text).collect::<Option<Vec<_>>>().map(Self)
    }

    /// Whether this binlog holds what a server at `position` applied: for
    /// each of its GTIDs, this binlog logged that domain and server's
    /// transactions up to it (what MariaDB checks when a replica connects
    /// at `position`). A server that logged its own writes since has
    /// higher sequence numbers in the domain, but not the other's.
    pub fn holds(&self, position: &Position) -> bool {
        position.0.iter().all(|g| {
            self.0
                .iter()
                .any(|m| m.domain == g.domain && m.server == g.server && m.seq >= g.seq)
        })
    }
}

/// GTIDs in MariaDB's form, as `MASTER_GTID_WAIT` takes them: `0-1-36,1-2-7`.
fn write_gtids(f: &mut fmt::Formatter<'_>, gtids: &[Gtid]) -> fmt::Result {
    for (i, g) in gtids.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        write!(f, "{sep}{}-{}-{}", g.domain, g.server, g.seq)?;
    }
    Ok(())
}

impl fmt::Display for BinlogState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_gtids(f, &self.0)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_gtids(f, &self.0)
    }
}

/// What a write answers in `X-Consistency-Token`: its unit, and a position
/// at or past its commit when there is one to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub unit: u16,
    pub position: Option<Position>,
}

impl ConsistencyToken {
    /// The token as callers see it: opaque text (`<unit>:<position>`).
    pub fn encode(&self) -> String {
        match &self.position {
            Some(p) => format!("{}:{p}", self.unit),
            None => format!("{}:", self.unit),
        }
    }

    /// Reads a token back; `None` when it is not one this engine wrote.
    pub fn decode(text: &str) -> Option<Self> {
        let (unit, position) = text.split_once(':')?;
        if unit.is_empty() || !unit.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let position = Position::parse(position)?;
        Some(Self {
            unit: unit.parse().ok()?,
            position: (!position.is_empty()).then_some(position),
        })
    }
}

/// How far a replica is behind, from the heartbeats the primary's probes
/// write (`written_at_ms`, one every probe interval): the age of the oldest
/// heartbeat it has not applied, or zero when it has applied the newest one
/// written. Exact to within one probe interval, where the server's own
/// `Seconds_Behind_Master` counts whole seconds and is `NULL` when the
/// replication threads stop.
///
/// `written` holds the last heartbeats this process wrote, oldest first;
/// `applied` is the newest heartbeat the replica holds. A replica that
/// misses even the oldest one kept is measured from what it holds instead
/// (at most one interval too much), so that the lag keeps growing however
/// long replication stands still.
pub fn lag_ms(written: &[i64], applied: i64, now_ms: i64) -> i64 {
    let missing_from = match written.iter().position(|&w| w > applied) {
        None => return 0,
        Some(0) => applied,
        Some(i) => written[i],
    };
    (now_ms - missing_from).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_advanced_covers_every_other() {
        let p = |t: &str| Position::parse(t).unwrap();
        let (a, b, c) = (p("0-1-10"), p("0-1-12"), p("0-1-12"));
        assert_eq!(most_advanced(&[&a, &b, &c]), Some(1));
        assert_eq!(most_advanced(&[&a]), Some(0));
        assert_eq!(most_advanced(&[]), None);
        // Two domains, each ahead in one: neither holds all the other has.
        let (x, y) = (p("0-1-10,1-2-3"), p("0-1-9,1-2-4"));
        assert_eq!(most_advanced(&[&x, &y]), None);
        // An empty position (received nothing) is covered by any.
        assert_eq!(most_advanced(&[&Position::default(), &a]), Some(1));
    }

    #[test]
    fn positions_parse_merge_and_cover() {
        let p = Position::parse("0-1-100,1-2-7").unwrap();
        assert_eq!(p.to_string(), "0-1-100,1-2-7");
        assert!(p.covers(&Position::parse("0-1-99").unwrap()));
        assert!(
            p.covers(&Position::parse("0-3-100").unwrap()),
            "by domain and seq"
        );
        assert!(!p.covers(&Position::parse("0-1-101").unwrap()));
        assert!(
            !p.covers(&Position::parse("2-1-1").unwrap()),
            "unknown domain"
        );
        let mut q = Position::parse("1-2-9").unwrap();
        q.merge(&p);
        assert_eq!(q.to_string(), "0-1-100,1-2-9");
        assert!(Position::parse("").unwrap().is_empty());
        assert_eq!(Position::parse("0-1"), None);
        assert_eq!(Position::parse("a-1-2"), None);
    }

    #[test]
    fn tokens_round_trip_and_reject_foreign_text() {
        let t = ConsistencyToken {
            unit: 3,
            position: Position::parse("0-1-4711"),
        };
        assert_eq!(t.encode(), "3:0-1-4711");
        assert_eq!(ConsistencyToken::decode(&t.encode()), Some(t));
        let bare = ConsistencyToken::decode("2:").unwrap();
        assert_eq!((bare.unit, bare.position), (2, None));
        for bad in ["", "x:0-1-1", "3", ":0-1-1", "3:0-1", "99999999:", "-1:"] {
            assert_eq!(ConsistencyToken::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_heartbeat_not_applied() {
        let written = [1_000, 2_000, 3_000];
        assert_eq!(lag_ms(&written, 3_000, 3_500), 0, "has the newest");
        assert_eq!(
            lag_ms(&written, 4_000, 3_500),
            0,
            "another process wrote later"
        );
        assert_eq!(lag_ms(&written, 2_000, 3_500), 500);
        assert_eq!(
            lag_ms(&written, 500, 3_500),
            3_000,
            "stopped before the first kept"
        );
        assert_eq!(lag_ms(&[], 500, 3_500), 0, "no heartbeat written yet");
    }

    #[test]
    fn a_binlog_holds_only_what_it_logged_of_each_server() {
        let state = BinlogState::parse("0-1-35,0-2-37").unwrap();
        let at = |t: &str| Position::parse(t).unwrap();
        assert!(state.holds(&at("0-1-35")));
        assert!(state.holds(&at("0-1-20")));
        assert!(state.holds(&at("0-2-37")));
        assert!(state.holds(&at("")));
        // Applied a commit of the old primary the new one never received,
        // though the new one's own writes have higher numbers.
        assert!(!state.holds(&at("0-1-36")));
        assert!(!state.holds(&at("1-1-3")));
        assert_eq!(state.to_string(), "0-1-35,0-2-37");
    }
}
