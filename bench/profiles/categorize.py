#!/usr/bin/env python3
"""Coarse breakdown of a folded perf profile (inferno-collapse-perf output):
each stack goes to the first category (in this order) whose marker appears
in it; prints the share of samples per category.
Usage: categorize.py FILE.folded"""
import sys
CATS = [
    ("snapshot build/encode", ["build_snapshot", "bincode::enc"]),
    ("state machine apply (ShardState::apply)", ["ShardState::apply", "state_machine"]),
    ("shard actor (decide, batching, replies)", ["charging_node::shard::", "ledger::decide"]),
    ("WAL (log engine, write + fsync)", ["raft::wal", "fdatasync"]),
    ("Raft internal transport (network, service)", ["raft::network", "raft::service"]),
    ("openraft core", ["openraft::"]),
    ("front door (validation, routing)", ["frontdoor::"]),
    ("gRPC/HTTP2 (tonic, hyper, h2)", ["tonic::", "hyper::", "h2::", "tower::"]),
    ("malloc/free (outside the above)", ["malloc", "_int_free", "cfree"]),
    ("tokio scheduler / parking", ["tokio::runtime", "futex", "epoll"]),
    ("kernel network (tcp)", ["tcp_", "sock_", "__x64_sys_sendto", "__x64_sys_recvfrom", "writev", "readv"]),
]
tot = 0
acc = {c: 0 for c, _ in CATS}
acc["other"] = 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    tot += n
    for c, marks in CATS:
        if any(m in stack for m in marks):
            acc[c] += n
            break
    else:
        acc["other"] += n
for c, n in sorted(acc.items(), key=lambda x: -x[1]):
    print(f"{100.0 * n / max(tot, 1):5.1f}%  {c}")
print(f"({tot} samples)")
