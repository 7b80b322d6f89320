#!/usr/bin/env python3
"""What security costs the controller: ingest CPU per message and RSS with N simulated
agents through the embedded broker, side by side in one run.

Variants (each with its own controller, data dir and simulator):
  base   binaries from before the zero-trust work (--base-bin; optional): no enrollment,
         no origin proof, no front door, plain MQTT.
  plain  these binaries: enrollment, origin proof on every message, the front door.
  tls    the same, with the embedded broker over TLS (agents pin the controller's CA).

Per variant and fleet size it starts the release controller and `metalbus-agent simulate`
(metrics every second, so ingest dominates) in groups of --batch agents --stagger seconds
apart (the steady cost, not a whole fleet's connect storm), waits until every node is
online (the time is counted from the first group), then
measures the controller over a window: CPU (utime+stime from /proc), messages ingested
(metalbus_ingest_messages_total) and RSS. It prints one table; ratios are per message,
against `base` when given, else against `plain`.

Usage:
  cargo build --release -p metalbus -p metalbus-agent
  python3 tests/tools/security_cost.py --bin target/release [--base-bin DIR]
      [--nodes 1000,5000] [--window 30] [--online-timeout 300]

Standard library only. Everything binds 127.0.0.1; every process is stopped at the end.
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
# What the shipped units allow (LimitNOFILE=65536). The front door holds one socket per
# agent (DECISIONS section 64), but the simulators hold one per agent too, and enrollment
# adds a short connection per agent. Raising the hard limit needs root; otherwise the soft
# limit goes up to the hard one.
NOFILE = 65536


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(hard, NOFILE)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def get(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def ingested(api):
    total = 0
    for line in get(f"{api}/metrics").splitlines():
        if line.startswith("metalbus_ingest_messages_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def online(api, token):
    page = json.loads(get(f"{api}/api/v1/nodes?online=true&per_page=1", token))
    return page["pagination"]["total"]


def supports(binary, sub, flag):
    out = subprocess.run([binary, sub, "--help"], capture_output=True, text=True)
    return flag in out.stdout


def run(variant, bindir, nodes, args):
    bindir = os.path.abspath(bindir)
    ctl_bin = os.path.join(bindir, "metalbus")
    agent_bin = os.path.join(bindir, "metalbus-agent")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        cmd = [ctl_bin, "serve", "--data-dir", data,
               "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        if variant == "tls":
            cmd.append("--mqtt-tls")
        log = open(os.path.join(tmp, "controller.log"), "w")
        ctl = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=tmp, preexec_fn=raise_nofile)
        sims = []
        try:
            listen = os.path.join(data, "listen.json")
            deadline = time.time() + 30
            while not os.path.exists(listen):
                if time.time() > deadline or ctl.poll() is not None:
                    raise RuntimeError(f"{variant}: the controller did not start (see {tmp})")
                time.sleep(0.1)
            time.sleep(0.2)
            bound = json.load(open(listen))
            api = bound.get("api") or f"http://{bound['http']}"
            broker = bound["broker"]
            token = open(os.path.join(data, "admin.token")).read().strip()
            # The fleet starts in groups of --batch agents (one simulator each), --stagger
            # apart: this measures the steady cost of security, not the connect storm of a
            # whole fleet at once (the fleet issue's subject).
            enroll = supports(agent_bin, "simulate", "--enroll-token-file")
            started = time.time()
            sims = []
            for i, first in enumerate(range(0, nodes, args.batch)):
                count = min(args.batch, nodes - first)
                sim_cmd = [agent_bin, "simulate", "--nodes", str(count), "--broker", broker,
                           "--prefix", f"bench{i}", "--state-dir", os.path.join(tmp, "sim"),
                           "--metrics-interval", args.interval]
                if enroll:
                    sim_cmd += ["--enroll-token-file", os.path.join(data, "enroll.token")]
                simlog = open(os.path.join(tmp, f"sim{i}.log"), "w")
                sims.append(subprocess.Popen(sim_cmd, stdout=simlog, stderr=simlog, cwd=tmp,
                                             preexec_fn=raise_nofile))
                if first + count < nodes:
                    time.sleep(args.stagger)
            up = 0
            while time.time() - started < args.online_timeout:
                try:
                    up = online(api, token)
                except OSError:
                    pass
                if up >= nodes:
                    break
                time.sleep(1)
            all_online = time.time() - started
            if up < nodes:
                all_online = None
            time.sleep(3)  # let the connect burst settle
            c0, m0, t0 = cpu_seconds(ctl.pid), ingested(api), time.time()
            time.sleep(args.window)
            c1, m1, t1 = cpu_seconds(ctl.pid), ingested(api), time.time()
            msgs = m1 - m0
            return {
                "variant": variant, "nodes": nodes, "online_s": all_online, "online": up,
                "msgs_per_s": msgs / (t1 - t0), "cores": (c1 - c0) / (t1 - t0),
                "us_per_msg": (c1 - c0) / msgs * 1e6 if msgs else float("nan"),
                "rss_mb": rss_mb(ctl.pid),
            }
        finally:
            for p in sims + [ctl]:
                if p and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in sims + [ctl]:
                if p:
                    try:
                        p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="dir with the release metalbus and metalbus-agent")
    ap.add_argument("--base-bin", help="the same binaries from before the zero-trust work")
    ap.add_argument("--nodes", default="1000,5000")
    ap.add_argument("--window", type=float, default=30.0, help="seconds measured per run")
    ap.add_argument("--interval", default="1s", help="the agents' metrics interval")
    ap.add_argument("--online-timeout", type=float, default=300.0)
    ap.add_argument("--batch", type=int, default=1000, help="agents per simulator")
    ap.add_argument("--stagger", type=float, default=15.0, help="seconds between simulators")
    args = ap.parse_args()
    rows = []
    for nodes in [int(n) for n in args.nodes.split(",")]:
        variants = ([("base", args.base_bin)] if args.base_bin else []) + [
            ("plain", args.bin), ("tls", args.bin)]
        for variant, bindir in variants:
            print(f"running {variant} with {nodes} agents ...", file=sys.stderr, flush=True)
            rows.append(run(variant, bindir, nodes, args))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print()
    print("| variant | agents | all online after | msgs/s | controller CPU | CPU per msg | ratio | RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref_name = "base" if args.base_bin else "plain"
        ref = next((x for x in rows if x["nodes"] == r["nodes"] and x["variant"] == ref_name), r)
        ratio = r["us_per_msg"] / ref["us_per_msg"] if ref["us_per_msg"] else float("nan")
        online_s = f"{r['online_s']:.1f} s" if r["online_s"] is not None else f"{r['online']} online"
        print(f"| {r['variant']} | {r['nodes']} | {online_s} | {r['msgs_per_s']:.0f} | "
              f"{r['cores']:.2f} cores | {r['us_per_msg']:.1f} µs | {ratio:.2f}x | {r['rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
