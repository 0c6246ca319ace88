//! The expiry sweeper: one ractor actor per node. Every tick it looks at each
//! local shard's published state for reservations past validity + grace and
//! asks the shard actor to expire them. Expiry is an ordinary event decided by
//! the account's actor; apply re-checks `log_ts >= expires_at + grace`.
use super::ShardMsg;
use crate::clock::SharedClock;
use crate::shard::Hosted;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::time::Duration;

/// Reservations expired per shard per tick (bounds the work of one tick).
pub const EXPIRIES_PER_TICK: usize = 256;

pub struct Sweeper;

/// Cloned and kept by the supervisor, which restarts a failed sweeper.
#[derive(Clone)]
pub struct SweeperArgs {
    /// The node's replicas (they come and go under scale-out).
    pub hosted: Hosted,
    pub clock: SharedClock,
    pub period: Duration,
}

pub enum SweepMsg {
    Tick,
}

impl Actor for Sweeper {
    type Msg = SweepMsg;
    type State = SweeperArgs;
    type Arguments = SweeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SweepMsg>,
        args: SweeperArgs,
    ) -> Result<SweeperArgs, ActorProcessingErr> {
        myself.send_interval(args.period, || SweepMsg::Tick);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SweepMsg>,
        _msg: SweepMsg,
        st: &mut SweeperArgs,
    ) -> Result<(), ActorProcessingErr> {
        let now = st.clock.now_ms();
        let shards: Vec<_> = st
            .hosted
            .iter()
            .map(|h| (h.store.view(), h.actor.clone()))
            .collect();
        for (view, actor) in shards {
            for (account, reservation) in view.state.due_expiries(now, EXPIRIES_PER_TICK) {
                let _ = actor.cast(ShardMsg::Expire {
                    account,
                    reservation,
                });
            }
        }
        Ok(())
    }
}
