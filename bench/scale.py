#!/usr/bin/python3
"""scale.py: 10^8 index entries over N coordinator shards, on paper (issue 9).

From three measured figures and a stated demand model it prints, per shard
count: entries and index memory per shard, the lookup and allocate+commit
keys/s each shard must serve for a 1,000-GPU cluster against what one shard
measured, and the failover time.

Measured (each unless given on the command line):
  bytes per entry     coordinator_bench --checkpoints 10000000 (the core's
                      index, in process; RSS growth per committed block)
  keys/s per shard    lookup_bench --modes lookup (batched prefix lookups over
                      the control protocol from 2 client processes against one
                      coordinator, on this machine's cores)
  failover gap        ha_test's "leader killed" case (etcd of 3 members, lease
                      TTL 2 s, write lease 2 s, quarantine 1 s): leader killed
                      -> standby leading, and -> first successful put
Assumed (flags; printed with the table):
  demand              --gpus GPUs each finishing --requests-per-gpu requests/s,
                      prompts of --prompt-tokens, --output-tokens generated,
                      --tokens-per-block per key, a prefix hit rate of
                      --hit-rate, --lookups-per-request lookups (a scheduler
                      may ask again before it admits a request), times --peak
                      for bursts. Each lookup is one call of prompt/block keys;
                      each miss and each generated block is one allocate and
                      one commit.
  index rebuild       after a failover the new leader re-registers the shard's
                      blocks from the agents' slot headers (recover_blocks);
                      taken at --rebuild-per-s blocks/s, by default the
                      measured single-thread allocate+commit rate (an
                      assumption: the rebuild was measured only at the small
                      sizes of ha_test).

Reproduce (after `ninja -C build coordinator_bench lookup_bench ha_test
kvpool-agent kvpool-coordinator`; ha_test needs Debian's etcd-server):
  /usr/bin/python3 bench/scale.py                       # measures all three (about a minute)
  /usr/bin/python3 bench/scale.py --bytes-per-entry 91 --shard-keys-per-s 4e6 \\
      --failover-ms 5541 --elect-ms 2042                 # no measurement
  /usr/bin/python3 bench/scale.py --json
"""

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GIB = 1 << 30


def run(cmd, timeout, env=None):
    print("scale: " + " ".join(cmd), file=sys.stderr)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        sys.exit("scale: %s failed (%d): %s" % (cmd[0], p.returncode, (p.stderr or p.stdout)[-2000:]))
    return p.stdout


def measure_core(bin_dir, blocks):
    """Bytes per entry and single-thread allocate+commit rate at `blocks`."""
    out = run([os.path.join(bin_dir, "coordinator_bench"), "--checkpoints", str(blocks), "--side-blocks", "0"], 600)
    # blocks, RSS MiB, B/block, index B/b, alloc+commit/s, lookup keys/s, lookup+lease/s, fill s
    rows = [l.split() for l in out.splitlines() if re.match(r"^\s*\d+\s+[\d.]+\s+[\d.]+", l)]
    if not rows:
        sys.exit("scale: no checkpoint row in coordinator_bench's output:\n" + out)
    f = rows[-1]
    return dict(blocks=int(f[0]), bytes_per_entry=float(f[2]), alloc_commit_per_s=float(f[4]),
                inproc_lookup_keys_per_s=float(f[5]))


def measure_lookups(bin_dir, seconds):
    out = run([os.path.join(bin_dir, "lookup_bench"), "--modes", "lookup", "--seconds", str(seconds), "--json"], 300)
    d = json.loads(out)
    r = d["rows"][0]
    if not r.get("ok"):
        sys.exit("scale: lookup_bench failed: " + r.get("error", ""))
    return dict(keys_per_s=r["keys_per_s"], calls_per_s=r["calls_per_s"], batch=d["batch"],
                coordinator_cores=r.get("coordinator_cores"), clients=d["clients"], host_cores=d.get("host_cores"))


def measure_failover(bin_dir):
    env = dict(os.environ, KVPOOL_TEST_BIN_DIR=bin_dir)
    out = run([os.path.join(bin_dir, "ha_test"), "etcd losing one of three*", "-s"], 600, env)
    m = re.search(r"ha failover: leader killed -> standby leading (\d+) ms, -> first successful put (\d+) ms", out)
    if not m:
        sys.exit("scale: no 'ha failover' line in ha_test's output (etcd-server missing?)")
    return dict(elect_ms=int(m.group(1)), gap_ms=int(m.group(2)))


def human(n):
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return "%.3g%s" % (n / div, unit)
    return "%.3g" % n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=float, default=1e8, help="index entries in all (100 nodes x 1 TiB / 1 MiB)")
    ap.add_argument("--shards", default="1,2,4,8,16,32")
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "bin"))
    ap.add_argument("--bytes-per-entry", type=float, help="skip coordinator_bench")
    ap.add_argument("--core-blocks", type=int, default=10_000_000, help="coordinator_bench checkpoint")
    ap.add_argument("--alloc-commit-per-s", type=float, help="with --bytes-per-entry: the rebuild rate default")
    ap.add_argument("--shard-keys-per-s", type=float, help="lookup keys/s one shard serves; skip lookup_bench")
    ap.add_argument("--lookup-seconds", type=float, default=3)
    ap.add_argument("--failover-ms", type=float, help="leader killed -> first successful put; skip ha_test")
    ap.add_argument("--elect-ms", type=float, help="leader killed -> standby leading (with --failover-ms)")
    ap.add_argument("--rebuild-per-s", type=float, help="blocks/s the new leader re-registers (default: measured "
                    "allocate+commit rate)")
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--requests-per-gpu", type=float, default=2.0, help="requests finished per GPU per second")
    ap.add_argument("--prompt-tokens", type=int, default=4096)
    ap.add_argument("--output-tokens", type=int, default=512)
    ap.add_argument("--tokens-per-block", type=int, default=16)
    ap.add_argument("--hit-rate", type=float, default=0.5, help="share of prompt blocks found cached")
    ap.add_argument("--lookups-per-request", type=float, default=1.0)
    ap.add_argument("--peak", type=float, default=3.0, help="burst factor over the mean")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    measured = {}
    if a.bytes_per_entry is None:
        core = measure_core(a.bin, a.core_blocks)
        measured["coordinator_bench"] = core
        bytes_per_entry, alloc_commit = core["bytes_per_entry"], core["alloc_commit_per_s"]
    else:
        bytes_per_entry, alloc_commit = a.bytes_per_entry, a.alloc_commit_per_s
    if a.shard_keys_per_s is None:
        lk = measure_lookups(a.bin, a.lookup_seconds)
        measured["lookup_bench"] = lk
        shard_keys = lk["keys_per_s"]
    else:
        shard_keys = a.shard_keys_per_s
    if a.failover_ms is None:
        fo = measure_failover(a.bin)
        measured["ha_test"] = fo
        gap_ms, elect_ms = fo["gap_ms"], fo["elect_ms"]
    else:
        gap_ms, elect_ms = a.failover_ms, a.elect_ms
    rebuild = a.rebuild_per_s or alloc_commit

    keys_per_lookup = a.prompt_tokens // a.tokens_per_block
    new_blocks = a.prompt_tokens * (1 - a.hit_rate) / a.tokens_per_block + a.output_tokens / a.tokens_per_block
    requests = a.gpus * a.requests_per_gpu * a.peak
    lookup_keys = requests * a.lookups_per_request * keys_per_lookup
    lookup_calls = requests * a.lookups_per_request
    write_keys = requests * new_blocks  # each one allocate and one commit

    rows = []
    for n in [int(s) for s in a.shards.split(",")]:
        per = a.entries / n
        row = dict(shards=n, entries_per_shard=per, index_gib_per_shard=per * bytes_per_entry / GIB,
                   lookup_keys_per_s_per_shard=lookup_keys / n, lookup_calls_per_s_per_shard=lookup_calls / n,
                   alloc_commit_keys_per_s_per_shard=write_keys / n,
                   lookup_headroom=shard_keys / (lookup_keys / n),
                   failover_gap_s=gap_ms / 1000.0,
                   rebuild_s=per / rebuild if rebuild else None,
                   keys_unavailable_in_failover=1.0 / n)
        row["failover_s"] = row["failover_gap_s"] + (row["rebuild_s"] or 0)
        rows.append(row)

    assumptions = dict(gpus=a.gpus, requests_per_gpu_s=a.requests_per_gpu, prompt_tokens=a.prompt_tokens,
                       output_tokens=a.output_tokens, tokens_per_block=a.tokens_per_block, hit_rate=a.hit_rate,
                       lookups_per_request=a.lookups_per_request, peak=a.peak, rebuild_blocks_per_s=rebuild)
    demand = dict(lookup_keys_per_s=lookup_keys, lookup_calls_per_s=lookup_calls, alloc_commit_keys_per_s=write_keys)
    inputs = dict(entries=a.entries, bytes_per_entry=bytes_per_entry, shard_lookup_keys_per_s=shard_keys,
                  failover_gap_ms=gap_ms, elect_ms=elect_ms, alloc_commit_per_s=alloc_commit)
    if a.json:
        print(json.dumps(dict(inputs=inputs, measured=measured, assumptions=assumptions, demand=demand, rows=rows),
                         indent=2))
        return

    print("# %s index entries over N coordinator shards" % human(a.entries))
    print("inputs: %.1f B/entry; one shard serves %s lookup keys/s; failover gap %.1f s (standby leading after "
          "%s s)" % (bytes_per_entry, human(shard_keys), gap_ms / 1000.0,
                     "%.1f" % (elect_ms / 1000.0) if elect_ms is not None else "?"))
    for k, v in measured.items():
        print("  measured by %s: %s" % (k, ", ".join("%s=%s" % (kk, round(vv, 3) if isinstance(vv, float) else vv)
                                                     for kk, vv in v.items())))
    print("demand of %d GPUs: %g requests/s/GPU x peak %g, %d-token prompts (%d keys a lookup, hit rate %g), "
          "%d output tokens, %g lookups/request -> %s lookup keys/s in %s calls/s, %s allocate+commit keys/s"
          % (a.gpus, a.requests_per_gpu, a.peak, a.prompt_tokens, keys_per_lookup, a.hit_rate, a.output_tokens,
             a.lookups_per_request, human(lookup_keys), human(lookup_calls), human(write_keys)))
    print("index rebuild after failover assumed at %s blocks/s (%s)\n"
          % (human(rebuild), "given" if a.rebuild_per_s else "the measured single-thread allocate+commit rate"))
    hdr = ("shards", "entries/shard", "index GiB/shard", "lookup keys/s/shard", "calls/s/shard",
           "alloc+commit/s/shard", "lookup headroom", "failover s (gap+rebuild)", "keys down in failover")
    table = [hdr]
    for r in rows:
        table.append((str(r["shards"]), human(r["entries_per_shard"]), "%.2f" % r["index_gib_per_shard"],
                      human(r["lookup_keys_per_s_per_shard"]), human(r["lookup_calls_per_s_per_shard"]),
                      human(r["alloc_commit_keys_per_s_per_shard"]), "%.1fx" % r["lookup_headroom"],
                      "%.1f (%.1f+%.1f)" % (r["failover_s"], r["failover_gap_s"], r["rebuild_s"] or 0),
                      "%.1f%%" % (100 * r["keys_unavailable_in_failover"])))
    widths = [max(len(row[i]) for row in table) for i in range(len(hdr))]
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
