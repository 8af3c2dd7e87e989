//! Calls of one kind that a unit sends its database together: gets, key
//! look-ups, pays and closes, and refunds.
//!
//! While `max_in_flight` batches of a kind run, new calls of that kind queue
//! here and leave together (up to `max_batch`) as soon as one finishes: an
//! idle unit answers a call at once, and a busy one asks for many rows in one
//! statement (and, for pays, closes and refunds, commits many in one
//! transaction)
//! instead of one round trip each. Every caller still gets the answer it would
//! get alone: its rows or its change, or the batch's error.

use tokio::sync::oneshot;

use crate::domain::shapes;
use crate::storage::{BatchAnswers, StoreError};

pub type CallReply<R> = oneshot::Sender<Result<R, StoreError>>;

pub struct CallBatcher<Q, R> {
    pending: Vec<(Q, CallReply<R>)>,
    in_flight: usize,
}

impl<Q, R> Default for CallBatcher<Q, R> {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            in_flight: 0,
        }
    }
}

impl<Q, R> CallBatcher<Q, R> {
    pub fn push(&mut self, request: Q, reply: CallReply<R>) {
        self.pending.push((request, reply));
    }

    /// The next batch when calls wait and fewer than `max_in_flight` batches
    /// run: as many as wait, at most `max_batch`, rounded down to a statement
    /// shape. The caller runs it and then calls [`Self::done`].
    pub fn take(
        &mut self,
        max_batch: usize,
        max_in_flight: usize,
    ) -> Option<Vec<(Q, CallReply<R>)>> {
        if self.pending.is_empty() || self.in_flight >= max_in_flight {
            return None;
        }
        self.in_flight += 1;
        let n = shapes::at_most(self.pending.len().min(max_batch));
        Some(self.pending.drain(..n).collect())
    }

    /// A batch taken with [`Self::take`] has answered its callers.
    pub fn done(&mut self) {
        self.in_flight -= 1;
    }

    /// Answers every queued call with `error` and forgets the running batches
    /// (the actor is restarting; their callers' replies were dropped).
    pub fn reset(&mut self, error: &StoreError) {
        for (_, reply) in self.pending.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        self.in_flight = 0;
    }
}

/// Answers each request of a batch from one query's result: `pick` finds a
/// request's answer among the rows, and a failed query fails every request.
pub fn answer_all<Q, T, R>(
    batch: Vec<(Q, CallReply<R>)>,
    rows: &Result<Vec<T>, StoreError>,
    pick: impl Fn(&Q, &[T]) -> Result<R, StoreError>,
) {
    for (request, reply) in batch {
        let answer = match rows {
            Ok(rows) => pick(&request, rows),
            Err(e) => Err(e.clone()),
        };
        let _ = reply.send(answer);
    }
}

/// Answers each call of a written batch with its own answer; a failed batch
/// fails every call.
pub fn answer_each<R>(replies: Vec<CallReply<R>>, answers: BatchAnswers<R>) {
    match answers {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_wait_for_room_and_take_what_queued() {
        let mut reads: CallBatcher<u32, u32> = CallBatcher::default();
        assert!(reads.take(4, 1).is_none(), "nothing queued");
        let mut receivers = Vec::new();
        for i in 0..6 {
            let (tx, rx) = oneshot::channel();
            reads.push(i, tx);
            receivers.push(rx);
        }
        let first = reads.take(4, 1).expect("room for one query");
        assert_eq!(
            first.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(reads.take(4, 1).is_none(), "one query at a time");
        answer_all(first, &Ok(vec![10u32, 11, 12, 13]), |q, rows| {
            Ok(rows[*q as usize])
        });
        reads.done();
        let second = reads.take(4, 1).expect("the rest");
        assert_eq!(second.len(), 2);
        answer_all(second, &Err::<Vec<u32>, _>(StoreError::NotFound), |_, _| {
            Ok(0)
        });
        reads.done();
        let answers: Vec<_> = receivers
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect();
        for (i, answer) in answers[..4].iter().enumerate() {
            assert!(matches!(answer, Ok(v) if *v == 10 + i as u32), "{answer:?}");
        }
        assert!(matches!(answers[4], Err(StoreError::NotFound)));
        assert!(matches!(answers[5], Err(StoreError::NotFound)));
    }

    #[test]
    fn a_batch_leaves_at_a_statement_shape() {
        let mut writes: CallBatcher<u32, u32> = CallBatcher::default();
        let mut receivers = Vec::new();
        for i in 0..7 {
            let (tx, rx) = oneshot::channel();
            writes.push(i, tx);
            receivers.push(rx);
        }
        // Seven wait, eight may go: six do (a shape), and the seventh next.
        assert_eq!(writes.take(8, 2).map(|b| b.len()), Some(6));
        assert_eq!(writes.take(8, 2).map(|b| b.len()), Some(1));
    }

    #[test]
    fn a_reset_fails_the_queue_and_frees_the_slots() {
        let mut reads: CallBatcher<u32, u32> = CallBatcher::default();
        let (tx, mut rx) = oneshot::channel();
        reads.push(1, tx);
        let running = reads.take(4, 1).unwrap();
        let (tx, mut queued) = oneshot::channel();
        reads.push(2, tx);
        reads.reset(&StoreError::Restarted { in_doubt: false });
        assert!(matches!(
            queued.try_recv(),
            Ok(Err(StoreError::Restarted { in_doubt: false }))
        ));
        drop(running);
        assert!(rx.try_recv().is_err(), "a dropped batch answers nothing");
        let (tx, _rx) = oneshot::channel();
        reads.push(3, tx);
        assert!(reads.take(4, 1).is_some(), "the slot is free again");
    }
}
