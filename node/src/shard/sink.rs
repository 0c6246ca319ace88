//! How a shard actor answers: a caller's [`Outcome`], and the sinks it is
//! sent into (one per unary request, one shared by a stream message's batch).
use super::*;

/// What a caller finally hears about its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Decided and (for acceptances) applied.
    Done(Result<Reply, Rejection>),
    /// This replica does not lead the shard; `leader` is the best hint.
    NotLeader { leader: Option<NodeId> },
    /// Leadership changed while the request was in flight: it may or may not
    /// have been applied. Retry with the same request id.
    Unknown(&'static str),
    /// A bounded resource is full.
    Overloaded(&'static str),
}

pub type ReplyTx = oneshot::Sender<Outcome>;

/// Where a request's outcome goes: its caller's own channel, or one slot of
/// a stream batch's shared sink (one allocation and one wakeup per batch
/// and shard, not per operation).
pub enum Sink {
    One(ReplyTx),
    Slot(BatchSlot),
}

impl Sink {
    pub(super) fn send(self, outcome: Outcome) {
        match self {
            Sink::One(tx) => {
                let _ = tx.send(outcome);
            }
            Sink::Slot(mut slot) => slot.fill(outcome),
        }
    }
}

/// The outcomes of a stream batch's operations on one shard. The front door
/// waits (bounded) for `done`; every slot is filled exactly once, by the
/// actor or, if the actor drops it, with `Unknown`.
pub struct BatchSink {
    outcomes: std::sync::Mutex<Vec<Option<Outcome>>>,
    remaining: AtomicUsize,
    done: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl BatchSink {
    /// A sink of `n` outcomes, and the signal that all are in.
    pub fn new(n: usize) -> (Arc<BatchSink>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let sink = Arc::new(BatchSink {
            outcomes: std::sync::Mutex::new((0..n).map(|_| None).collect()),
            remaining: AtomicUsize::new(n),
            done: std::sync::Mutex::new(Some(tx)),
        });
        if n == 0 {
            sink.finish();
        }
        (sink, rx)
    }

    /// Slot `i` (each index handed out once).
    pub fn slot(self: &Arc<Self>, i: usize) -> BatchSlot {
        BatchSlot {
            sink: self.clone(),
            i,
            filled: false,
        }
    }

    /// The outcomes so far (`None`: not answered yet, e.g. after a deadline).
    pub fn take(&self) -> Vec<Option<Outcome>> {
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn finish(&self) {
        if let Some(tx) = self.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

/// One operation's place in a [`BatchSink`].
pub struct BatchSlot {
    sink: Arc<BatchSink>,
    i: usize,
    filled: bool,
}

impl BatchSlot {
    fn fill(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.filled, true) {
            return;
        }
        if let Some(o) = self
            .sink
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(self.i)
        {
            *o = Some(outcome);
        }
        if self.sink.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sink.finish();
        }
    }
}

impl Drop for BatchSlot {
    fn drop(&mut self) {
        // As a dropped oneshot tells its caller: the outcome is unknown.
        self.fill(Outcome::Unknown("shard actor dropped the request"));
    }
}
