//! One group's pipelined append session on a peer's shared `Append`
//! stream, and the transport's call errors.
use super::*;

pub(super) type SessionItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// One group's pipelined append session on a shared `Append` stream: the
/// output stream of one `stream_append` call. Polling it sends requests from
/// `input` while fewer than `window` are unanswered and yields the replies
/// in order.
pub(super) struct Session<S> {
    pub(super) input: Option<S>,
    pub(super) mux: Arc<AppendMux>,
    pub(super) peers: Arc<Peers>,
    pub(super) id: u64,
    pub(super) shard: ShardId,
    /// The member id of the replica this session feeds.
    pub(super) to_replica: NodeId,
    pub(super) rx: mpsc::UnboundedReceiver<SessionEvent>,
    /// Send times of the unanswered requests, oldest first.
    pub(super) pending: VecDeque<Instant>,
    pub(super) next_seq: u64,
    pub(super) next_reply_seq: u64,
    pub(super) last_reply: Instant,
    pub(super) window: usize,
    pub(super) ttl: Duration,
    pub(super) end_sent: bool,
    pub(super) done: bool,
}

impl<S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin> Session<S> {
    pub(super) fn finish(&mut self, item: SessionItem) -> Option<SessionItem> {
        self.done = true;
        Some(item)
    }

    pub(super) fn send(&mut self, body: Vec<u8>, end: bool) -> Result<(), ()> {
        let seq = self.next_seq;
        if !end {
            self.next_seq += 1;
        }
        self.mux.send(AppendFrame {
            shard: self.shard,
            session: self.id,
            seq,
            body,
            end,
            from_node: self.peers.me,
            to_replica: self.to_replica,
        })
    }

    pub(super) async fn next_item(&mut self) -> Option<SessionItem> {
        if self.done {
            return None;
        }
        loop {
            if self.peers.is_isolated() {
                self.mux.close("isolated (fault injection)");
                let e = CallError::Unreachable("isolated (fault injection)".into());
                return self.finish(Err(e.into_rpc()));
            }
            if self.input.is_none() && self.pending.is_empty() {
                self.done = true;
                return None;
            }
            let can_send = self.input.is_some() && self.pending.len() < self.window;
            let reply_by = self
                .pending
                .front()
                .map(|sent| (*sent).max(self.last_reply) + self.ttl);
            let input = &mut self.input;
            let next_input = async {
                match input {
                    Some(s) if can_send => s.next().await,
                    _ => std::future::pending().await,
                }
            };
            let reply_deadline = async {
                match reply_by {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                ev = self.rx.recv() => {
                    let reply = match ev {
                        Some(Ok(r)) => r,
                        Some(Err(reason)) => {
                            return self.finish(Err(CallError::Unreachable(reason).into_rpc()));
                        }
                        None => {
                            let e = CallError::Unreachable("append stream closed".into());
                            return self.finish(Err(e.into_rpc()));
                        }
                    };
                    if reply.seq != self.next_reply_seq || self.pending.is_empty() {
                        let e = CallError::Network(format!(
                            "append reply out of order: seq {} expected {}",
                            reply.seq, self.next_reply_seq
                        ));
                        return self.finish(Err(e.into_rpc()));
                    }
                    self.pending.pop_front();
                    self.next_reply_seq += 1;
                    self.last_reply = Instant::now();
                    let res: Result<StreamAppendResult<TypeConfig>, String> =
                        match codec::decode(&reply.body) {
                            Ok(r) => r,
                            Err(e) => {
                                let e = CallError::Network(e.to_string());
                                return self.finish(Err(e.into_rpc()));
                            }
                        };
                    return match res {
                        Ok(Ok(matching)) => Some(Ok(Ok(matching))),
                        Ok(Err(append_err)) => self.finish(Ok(Err(append_err))),
                        Err(m) => self.finish(Err(remote_err(m))),
                    };
                }
                _ = reply_deadline => {
                    if self.mux.silent_for() >= STREAM_SILENCE_MAX {
                        self.mux.close("append stream silent");
                    }
                    let e = CallError::Network(format!(
                        "no append reply within {:?}",
                        self.ttl
                    ));
                    return self.finish(Err(e.into_rpc()));
                }
                req = next_input => match req {
                    Some(req) => {
                        let body = match codec::encode(&req) {
                            Ok(b) => b,
                            Err(e) => {
                                let e = CallError::Network(e.to_string());
                                return self.finish(Err(e.into_rpc()));
                            }
                        };
                        if self.next_seq == 0 {
                            self.peers.counters.append_sessions.fetch_add(1, Ordering::Relaxed);
                        }
                        if self.send(body, false).is_err() {
                            let e = CallError::Unreachable("append stream closed".into());
                            return self.finish(Err(e.into_rpc()));
                        }
                        self.pending.push_back(Instant::now());
                        let c = &self.peers.counters;
                        c.append_frames.fetch_add(1, Ordering::Relaxed);
                        c.append_max_in_flight
                            .fetch_max(self.pending.len() as u64, Ordering::Relaxed);
                    }
                    None => {
                        self.input = None;
                        if self.next_seq > 0 {
                            self.end_sent = true;
                            // A closed stream fails this session on the next turn.
                            let _ = self.send(Vec::new(), true);
                        }
                    }
                },
            }
        }
    }
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        self.mux.unregister(self.id);
        if self.next_seq > 0 && !self.end_sent {
            // Let the peer drop its side of the session.
            let _ = self.mux.send(AppendFrame {
                shard: self.shard,
                session: self.id,
                seq: self.next_seq,
                body: Vec::new(),
                end: true,
                from_node: self.peers.me,
                to_replica: self.to_replica,
            });
        }
    }
}
