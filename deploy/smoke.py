#!/usr/bin/env python3
"""Checks of the compose cluster from the host, through the published ports
only (node i: api 127.0.0.1:2505i, metrics 127.0.0.1:2910i). Used by
scripts/compose.sh; needs CHARGECTL (path of chargectl), CHARGING_CA and,
the cluster having bearer tokens on, CHARGING_TOKEN (an admin token:
scripts/compose.sh token admin) in the environment, which chargectl reads.

  smoke.py ready [--timeout S]        every node 1-3 answers and sees a leader for every shard
  smoke.py caught-up N [--timeout S]  node N replicates every shard with zero lag
  smoke.py run                        the smoke test (see run() below)

Every wait is bounded; any failure exits 1 with a message naming what failed.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

NODES = [1, 2, 3]  # replaced at start by the active nodes of the cluster map
CHARGECTL = os.environ.get("CHARGECTL", "target/release/chargectl")
HERE = os.path.dirname(os.path.abspath(__file__))
COMPOSE_SH = os.path.join(HERE, "..", "scripts", "compose.sh")

RG = 77  # the smoke test's own rating group
PRICE = "bytes:1MB:1000000000"  # one minor unit per started MB
INITIAL = 10_000  # minor units


class Failed(Exception):
    pass



def uuid7() -> str:
    """A UUIDv7 (RFC 9562): the nodes refuse other request ids. 48-bit ms
    timestamp, version 7, 12 random bits, variant 10, 62 random bits."""
    ms = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))

def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def endpoint(n):
    return f"https://127.0.0.1:{25050 + n}"


def ctl(n, *args, request_id=None, deadline_ms=3000, max_retries=5):
    """Runs chargectl --json against node n: (exit code, parsed JSON or None)."""
    cmd = [CHARGECTL, "--endpoint", endpoint(n), "--json",
           "--deadline-ms", str(deadline_ms), "--max-retries", str(max_retries), *args]
    if request_id is not None:
        cmd += ["--request-id", request_id]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline_ms / 1000 + 10)
    try:
        out = json.loads(p.stdout) if p.stdout.strip() else None
    except json.JSONDecodeError:
        out = None
    return p.returncode, out


def ok(n, *args, **kw):
    """chargectl that must succeed with result OK."""
    rc, out = ctl(n, *args, **kw)
    if rc != 0 or out is None or out.get("result", "OK") != "OK":
        raise Failed(f"node {n}: chargectl {' '.join(args)} -> exit {rc}: {out}")
    return out


def status(n, deadline_ms=1500):
    rc, out = ctl(n, "status", deadline_ms=deadline_ms, max_retries=0)
    return out if rc == 0 and out and "shard_status" in out else None


def wait(what, timeout, probe, period=0.25):
    """Calls probe() until it returns a truthy value (returned) or timeout (Failed)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            r = probe()
        except Failed as e:
            r, last = None, str(e)
        if r:
            return r
        if time.monotonic() >= deadline:
            raise Failed(f"timed out after {timeout:.0f} s waiting until {what}"
                         + (f" (last: {last})" if last else ""))
        time.sleep(period)


def all_led(nodes):
    """Statuses of `nodes` if each answers and knows a leader for every shard."""
    st = {}
    for n in nodes:
        s = status(n)
        if s is None:
            raise Failed(f"node {n} does not answer status")
        missing = [x["shard_id"] for x in s["shard_status"] if not x.get("leader")]
        # With more nodes than replicas a node may host no shard at all.
        if (not s["shard_status"] and len(NODES) <= 3) or missing:
            raise Failed(f"node {n} sees no leader for shards {missing}")
        st[n] = s
    return st


def caught_up(n):
    """True when node n, in every shard, has the leader's applied index and
    account count and the leader reports its lag as 0."""
    st = all_led(NODES)
    mine = {x["shard_id"]: x for x in st[n]["shard_status"]}
    for sid, x in mine.items():
        leader = x["leader"]
        lx = next(y for y in st[leader]["shard_status"] if y["shard_id"] == sid)
        if lx["leader"] != leader:
            raise Failed(f"shard {sid}: node {n} names {leader} leader, {leader} names {lx['leader']}")
        if leader != n:
            lag = {int(k): v for k, v in lx.get("lag", {}).items()}
            if lag.get(n) != 0:
                raise Failed(f"shard {sid}: leader {leader} reports lag of node {n} = {lag.get(n)}")
        if (x["applied_index"], x["accounts"]) != (lx["applied_index"], lx["accounts"]):
            raise Failed(f"shard {sid}: node {n} applied {x['applied_index']} accounts {x['accounts']}, "
                         f"leader {leader} applied {lx['applied_index']} accounts {lx['accounts']}")
    return True


def shard_of(account, shards):
    """The documented account -> shard hash: FNV-1a 64 over the id bytes."""
    h = 0xCBF29CE484222325
    for b in account.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % shards


def hosts(st, shard):
    """Nodes (of the statuses `st`) hosting a replica of `shard`."""
    return [n for n, s in st.items() if any(x["shard_id"] == shard for x in s["shard_status"])]


def accounts_by_shard(n):
    s = status(n)
    if s is None:
        raise Failed(f"node {n} does not answer status")
    return {x["shard_id"]: x["accounts"] for x in s["shard_status"]}


def money(n, account):
    """(balance, reserved) of the main money bucket, read through node n."""
    out = ok(n, "balance", account)
    b = [x for x in out["buckets"] if x["kind"] == "MONEY"]
    if not b:
        raise Failed(f"{account}: no money bucket in {out}")
    return b[0]["balance"], b[0]["reserved"]


def expect(what, got, want):
    if got != want:
        raise Failed(f"{what}: got {got}, want {want}")
    log(f"ok: {what} = {got}")


def compose(*args):
    subprocess.run([COMPOSE_SH, *args], check=True)


def charge_until_done(nodes, account, rid, timeout):
    """Debits 3 MB with request id rid, retrying (same id) over `nodes` until
    one answers OK; returns (node, seconds taken)."""
    t0 = time.monotonic()
    attempt = 0

    def probe():
        nonlocal attempt
        n = nodes[attempt % len(nodes)]
        attempt += 1
        rc, out = ctl(n, "debit", account, "--rg", str(RG), "--bytes", "3MB", request_id=rid)
        if rc == 0 and out and out.get("result") == "OK":
            return (n, out)
        raise Failed(f"debit via node {n}: exit {rc} {out}")

    n, out = wait(f"a debit succeeds through nodes {nodes}", timeout, probe, period=0.5)
    expect("debit charged (minor units)", out["charged"], 3)
    return n, time.monotonic() - t0


def run():
    t_start = time.monotonic()
    log("cluster ready?")
    s1 = wait("node 1 answers status", 30, lambda: status(1))
    NODES[:] = [x["node_id"] for x in s1["nodes"] if not x.get("draining")]
    log(f"active nodes: {NODES}")
    wait("every node sees a leader for every shard it hosts", 30, lambda: all_led(NODES))

    for n in NODES:
        url = f"http://127.0.0.1:{29100 + n}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()  # may be empty: a node that never led has no series yet
            if r.status != 200 or not r.headers.get("content-type", "").startswith("text/plain"):
                raise Failed(f"{url}: HTTP {r.status}, {r.headers.get('content-type')}")
        log(f"ok: {url} answers ({len(body)} bytes)")

    account = f"smoke-{uuid.uuid4().hex[:12]}"
    # A tariff touches every shard: retried (same request id) while leaders move.
    rid = uuid7()
    wait("the tariff is set", 30, lambda: ok(1, "set-tariff", "--rg", str(RG), "--price", PRICE, request_id=rid))
    log(f"tariff rating group {RG}: {PRICE} (via node 1)")

    shard = shard_of(account, s1["shards"])
    holder = hosts(all_led(NODES), shard)[0]
    before = accounts_by_shard(holder)
    ok(1, "create-account", account, "--currency", "EUR", "--balance", str(INITIAL))
    log(f"created {account} with {INITIAL} (via node 1), shard {shard}")

    def applied():
        now = accounts_by_shard(holder)
        return True if now.get(shard, 0) == before.get(shard, 0) + 1 else None
    wait(f"node {holder} applies the new account in shard {shard}", 10, applied)

    res = ok(2, "reserve", account, "--session", "smoke", "--rg", str(RG), "--bytes", "10MB")
    expect("reserve granted bytes (via node 2)", res["granted"]["volume_bytes"], 10_000_000)
    expect("balance, reserved after reserve (via node 3)", money(3, account), (INITIAL, 10))
    com = ok(2, "commit", account, str(res["reservation_id"]), "--bytes", "6MB", "--final")
    expect("commit charged (via node 2)", com["charged"], 6)
    expect("balance, reserved after commit (via node 3)", money(3, account), (INITIAL - 6, 0))

    st = all_led(NODES)
    victim = next(x["leader"] for x in st[holder]["shard_status"] if x["shard_id"] == shard)
    others = [n for n in NODES if n != victim]
    log(f"{account} lives in shard {shard}, led by node {victim}: docker kill node{victim}")
    compose("kill", str(victim))

    rid = uuid7()
    served_by, took = charge_until_done(others, account, rid, timeout=30)
    log(f"ok: charging resumed {took:.1f} s after the kill (node {served_by}, request id {rid})")
    again = others[1] if served_by == others[0] else others[0]
    out = ok(again, "debit", account, "--rg", str(RG), "--bytes", "3MB", request_id=rid)
    expect(f"replayed charge of the retry of {rid} via node {again}", out["charged"], 3)
    expect("balance after the debit and its retry (once)", money(again, account), (INITIAL - 9, 0))

    st = all_led(others)
    survivor = hosts(st, shard)[0]
    new_leader = next(x["leader"] for x in st[survivor]["shard_status"] if x["shard_id"] == shard)
    if new_leader == victim:
        raise Failed(f"shard {shard}: the killed node {victim} is still named leader")
    log(f"shard {shard} now led by node {new_leader}")

    t0 = time.monotonic()
    compose("start", str(victim))
    wait(f"node {victim} catches up in every shard", 60, lambda: caught_up(victim), period=0.5)
    log(f"ok: node {victim} restarted and caught up in {time.monotonic() - t0:.1f} s")
    expect(f"balance read via the restarted node {victim}", money(victim, account), (INITIAL - 9, 0))
    log(f"smoke test passed in {time.monotonic() - t_start:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ready")
    r.add_argument("--timeout", type=float, default=90)
    c = sub.add_parser("caught-up")
    c.add_argument("node", type=int, choices=NODES)
    c.add_argument("--timeout", type=float, default=60)
    sub.add_parser("run")
    a = ap.parse_args()
    if not os.access(CHARGECTL, os.X_OK):
        sys.exit(f"smoke.py: {CHARGECTL} is not executable (set CHARGECTL)")
    # With the cluster's token keys made, every call needs a token: without
    # one each would be UNAUTHENTICATED, read here as "does not answer".
    if os.path.exists(os.path.join(HERE, "certs", "jwt.pub.pem")) and not os.environ.get("CHARGING_TOKEN"):
        sys.exit("smoke.py: the cluster checks bearer tokens; set CHARGING_TOKEN "
                 "(export CHARGING_TOKEN=$(scripts/compose.sh token admin))")
    try:
        if a.cmd == "ready":
            t0 = time.monotonic()
            wait("every node 1-3 sees a leader for every shard", a.timeout, lambda: all_led(NODES))
            print(f"ready: every shard has a leader ({time.monotonic() - t0:.1f} s)")
        elif a.cmd == "caught-up":
            wait(f"node {a.node} catches up", a.timeout, lambda: caught_up(a.node), period=0.5)
            print(f"node {a.node}: zero lag in every shard")
        else:
            run()
    except (Failed, subprocess.CalledProcessError, OSError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
