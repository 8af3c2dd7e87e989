//! How many rows a batched statement carries: only a few sizes ("shapes").
//! Pure arithmetic, used by the unit actor (how many calls leave a queue
//! together) and by storage (how many rows a statement has).
//!
//! sqlx prepares every distinct SQL text once per connection and keeps at
//! most 100 of them (its `statement-cache-capacity`). A batch statement with
//! a placeholder group per row is a distinct text for every row count, so
//! batches of 1 to 64 rows over six statement kinds made hundreds of texts,
//! and sqlx evicted one for nearly every batch under load. An eviction is
//! worse than a second `PREPARE`: sqlx sends `COM_STMT_CLOSE`, which the
//! server does not answer, and sqlx 0.9.0 leaves Nagle's algorithm on
//! (launchbadge/sqlx#4335), so the next statement waits for the server's
//! delayed ACK, 40-100 ms. Measured: at 512 connections creates/s halved and
//! p99 went to ~100 ms.
//!
//! So batches leave in shapes (powers of two and 1.5 times them: 1, 2, 3, 4,
//! 6, 8, 12, 16, 24, ...), at most 14 of them up to [`MAX_ROWS`]. A batch is
//! taken at a shape ([`at_most`]); a statement whose rows are a subset (the
//! events of the changes that were not refused) goes in shape-sized chunks
//! ([`split`]); a look-up pads its list by repeating a value ([`at_least`]).
//! The statements a unit's connection can see then fit in sqlx's cache
//! (`the_statements_of_every_batch_size_fit_the_statement_cache` counts them).

/// The largest batch a unit sends (`group_commit.max_batch` may not exceed
/// it): 14 shapes of each batched statement kind.
pub const MAX_ROWS: usize = 128;

/// Whether `n` is a shape: a power of two or 1.5 times one.
pub fn is_shape(n: usize) -> bool {
    n.is_power_of_two() || (n.is_multiple_of(3) && (n / 3).is_power_of_two())
}

/// The largest shape not above `n` (`n >= 1`).
pub fn at_most(n: usize) -> usize {
    assert!(n >= 1, "a batch has rows");
    let p = 1 << n.ilog2();
    if p >= 2 && p / 2 * 3 <= n {
        p / 2 * 3
    } else {
        p
    }
}

/// The smallest shape not below `n` (`n >= 1`).
pub fn at_least(n: usize) -> usize {
    let p = n.max(1).next_power_of_two();
    if p >= 4 && p / 4 * 3 >= n {
        p / 4 * 3
    } else {
        p
    }
}

/// `items` in consecutive shape-sized chunks, largest first (at most three
/// for up to 64 items, four up to [`MAX_ROWS`]).
pub fn split<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (chunk, tail) = rest.split_at(at_most(rest.len()));
        rest = tail;
        Some(chunk)
    })
}

/// How many of `creates` and `claims` waiting leave in one group-commit
/// batch: a shape of creates (its orders' statement), and as many claims
/// as make creates plus claims a shape too (the key records' statement,
/// one row per order's slot and per claim), so that the batch is one
/// statement of each. The most rows, and of those the most creates; the
/// rest wait for the next batch.
pub fn pair(creates: usize, claims: usize) -> (usize, usize) {
    let shapes = || (1..=MAX_ROWS).filter(|&n| is_shape(n));
    let mut best = (
        0,
        if claims == 0 {
            0
        } else {
            at_most(claims.min(MAX_ROWS))
        },
    );
    for n in shapes().take_while(|&n| n <= creates) {
        let c = at_most((n + claims).min(MAX_ROWS)) - n;
        if (n + c, n) > (best.0 + best.1, best.0) {
            best = (n, c);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_powers_of_two_and_one_and_a_half_times_them() {
        let shapes: Vec<usize> = (1..=MAX_ROWS).filter(|&n| is_shape(n)).collect();
        assert_eq!(shapes, [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]);
    }

    #[test]
    fn rounding_lands_on_the_nearest_shape_each_way() {
        for n in 1..=4 * MAX_ROWS {
            let (down, up) = (at_most(n), at_least(n));
            assert!(is_shape(down) && is_shape(up), "{n}: {down} {up}");
            assert!(down <= n && n <= up, "{n}: {down} {up}");
            // Nothing between: the next shape up from `down` is past `n`.
            assert!(at_least(down + 1) > n, "{n}: {down} is not the largest");
            assert!(
                up == 1 || at_most(up - 1) < n,
                "{n}: {up} is not the smallest"
            );
            // A shape is never more than 1.5 times the last: little padding.
            assert!(up * 2 <= n * 3 || n == 1, "{n}: padded to {up}");
        }
    }

    #[test]
    fn a_batch_pairs_creates_and_claims_in_shapes() {
        assert_eq!(pair(0, 0), (0, 0));
        assert_eq!(pair(5, 0), (4, 0));
        assert_eq!(pair(0, 5), (0, 4));
        assert_eq!(pair(16, 8), (16, 8));
        assert_eq!(pair(16, 5), (16, 0), "no claim fits; creates first");
        assert_eq!(
            pair(13, 3),
            (12, 0),
            "12 + 3 is no shape, and 6 + 2 is fewer"
        );
        assert_eq!(pair(6, 3), (6, 2));
        for creates in 0..=64 {
            for claims in 0..=64 {
                let (n, c) = pair(creates, claims);
                assert!(n <= creates && c <= claims, "{creates} {claims}");
                assert!(n == 0 || is_shape(n), "{creates} {claims}: {n}");
                assert!(n + c == 0 || is_shape(n + c), "{creates} {claims}: {n}+{c}");
                // Never fewer rows than the creates alone or the claims alone.
                assert!(
                    creates == 0 || n >= at_most(creates).min(n + c),
                    "{creates} {claims}"
                );
                assert!(
                    creates == 0 || n + c >= at_most(creates),
                    "{creates} {claims}"
                );
                assert!(
                    claims == 0 || n + c >= at_most(claims),
                    "{creates} {claims}"
                );
            }
        }
    }

    #[test]
    fn split_covers_everything_in_order_in_a_few_shapes() {
        for n in 0..=MAX_ROWS {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = split(&items).collect();
            assert!(chunks.iter().all(|c| is_shape(c.len())), "{n}");
            let most = if n <= 64 { 3 } else { 4 };
            assert!(chunks.len() <= most, "{n}: {} chunks", chunks.len());
            assert_eq!(chunks.concat(), items, "{n}");
        }
    }
}
