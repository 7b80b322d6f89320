#!/usr/bin/env python3
"""Fleet benchmark (issue 13): N simulated agents through the embedded broker and through a
local Mosquitto, side by side in one run.

For each fleet size N and each broker it starts, in a fresh temp dir, the release
controller (`metalbus serve`; for Mosquitto a local `mosquitto` on a free loopback port,
set up the way `metalbus mosquitto-config` prints, and `serve --broker mqtt://...` with
`[broker] mosquitto_dir`), then `metalbus-agent simulate` with enrollment, all N agents at
once (split over several processes above --per-sim agents), and measures, phase by phase:

  start    time from the simulators' start until the controller counts all N online
           (`metalbus_nodes_online` on /metrics, which is cheap: /api/v1/usage reads every
           node from the store) and every simulated agent has logged its CONNACK;
           connections, lost connections, refused logins and enrollment retries, from the
           simulators' logs (the --stats file counts deliveries, not connections);
           controller CPU while it lasted.
  steady   a --window of the agents sending metrics every --metrics-interval: controller
           RSS (peak and now) and CPU.
  kill9    (--kill9) kill -9 of the controller, a restart on the same data dir and ports,
           and the time until every agent is connected again (no simulated agent whose
           last connection event is a loss) and the restarted controller has heard a
           status from each (`metalbus_ingest_messages_total{kind="status"}` >= N).
           `metalbus_nodes_online` cannot tell: the store keeps nodes online across a
           crash until they have been silent for a while.
  ingest   the simulators restarted with --ingest-interval (default 1s, a fixed offered
           load of N/interval messages per second), then a --window: metrics messages
           the controller ingested per second and controller CPU per message. Several
           intervals (e.g. 1s,100ms) step the load up towards saturation.

Every wait is bounded by --timeout, so a start that does not converge ends the run for
that N and broker with the count reached. It prints one table per N, brokers side by side
with the ratio embedded/Mosquitto, and with --json FILE writes every figure.

Usage:
  cargo build --release -p metalbus -p metalbus-agent
  python3 tests/tools/fleet_bench.py [--bin target/release] [--nodes 1000,3000]
      [--brokers embedded,mosquitto] [--kill9] [--tls] [--window 30] [--timeout 180]
      [--metrics-interval 15s] [--ingest-interval 1s] [--json FILE] [--keep]
      [--mosquitto-conf 'max_queued_messages 0']
  python3 tests/tools/fleet_bench.py --table FILE   # the tables of an earlier --json FILE

Mosquitto's default max_queued_messages (1000 per client) drops messages to the controller
when a large fleet starts at once, and the births it drops are never replaced; pass
--mosquitto-conf 'max_queued_messages 0' to compare against a Mosquitto that keeps them.

Standard library only; needs `mosquitto` on PATH for the Mosquitto runs (and `openssl`
with --tls). Everything binds 127.0.0.1; every process it starts runs in a process group
of its own and is stopped at the end, also on Ctrl-C or SIGTERM.
"""

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# The open-file limit as the shipped units set it, shared with the security cost script.
from security_cost import CLK_TCK, raise_nofile  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")
NODE = re.compile(r"\bnode=(\S+)")
KIND = re.compile(r'kind="([^"]*)"')
POLL = 0.5
SETTLE = 5.0


# ---------------------------------------------------------------------------------------
# Processes


class Procs:
    """Every process the benchmark started, each the leader of its own process group."""

    # Stopped in this order: the agents first (they publish their clean offline status),
    # then the controller, then the broker.
    ORDER = {"sim": 0, "controller": 1, "mosquitto": 2}

    def __init__(self):
        self.live = []

    def start(self, role, cmd, log_path, cwd):
        with open(log_path, "ab") as log:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=cwd,
                                 start_new_session=True, preexec_fn=raise_nofile)
        p.role = role
        self.live.append(p)
        return p

    def kill9(self, p):
        """SIGKILL to the process alone (a crash), and reap it."""
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        self.live.remove(p)

    def stop(self, procs, grace=30.0):
        """SIGTERM to each group, then SIGKILL to what is left after `grace`."""
        procs = [p for p in procs if p in self.live]
        for p in procs:
            if p.poll() is None:
                _killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + grace
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _killpg(p.pid, signal.SIGKILL)
                p.wait()
            # Whatever the leader left behind in its group.
            _killpg(p.pid, signal.SIGKILL)
            self.live.remove(p)

    def stop_all(self):
        for role in sorted(self.ORDER, key=self.ORDER.get):
            self.stop([p for p in self.live if p.role == role])


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# Measurements


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_mb(pid):
    """(VmRSS, VmHWM) in MB: resident now and the process's peak."""
    rss = hwm = 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, hwm


def box_cpu():
    """Busy and total CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    idle = v[3] + v[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


def get(url, timeout=5.0):
    with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout) as r:
        return r.read().decode()


def scrape(api):
    """(metalbus_nodes_online, {kind: metalbus_ingest_messages_total}) or None."""
    try:
        text = get(f"{api}/metrics")
    except (OSError, urllib.error.URLError):
        return None
    online, ingest = 0, {}
    for line in text.splitlines():
        if line.startswith("metalbus_nodes_online "):
            online = int(float(line.split()[1]))
        elif line.startswith("metalbus_ingest_messages_total{"):
            m = KIND.search(line)
            if m:
                ingest[m.group(1)] = float(line.rsplit(" ", 1)[1])
    return online, ingest


class SimLogs:
    """Reads the simulators' logs as they grow: each agent's last connection event, and
    counts of connections (CONNACKs), lost connections and enrollment attempts."""

    def __init__(self):
        self.offsets = {}
        self.rest = {}
        self.up = {}
        self.counts = {"connected": 0, "lost": 0, "lost_timeout": 0, "refused": 0, "stopped": 0,
                       "enrolled": 0, "enroll_failed": 0}

    def add(self, path):
        if path not in self.offsets:
            self.offsets[path] = 0
            self.rest[path] = b""

    def poll(self):
        for path in list(self.offsets):
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[path])
                    data = f.read()
            except FileNotFoundError:
                continue
            self.offsets[path] += len(data)
            lines = (self.rest[path] + data).split(b"\n")
            self.rest[path] = lines.pop()
            for raw in lines:
                self._line(ANSI.sub("", raw.decode(errors="replace")))

    def _line(self, line):
        if "connected to broker" in line:
            key, up = "connected", True
        elif "broker connection lost" in line:
            key, up = "lost", False
            if "timeout" in line.lower():
                self.counts["lost_timeout"] += 1
        elif "the broker refused this node's credential" in line:
            key, up = "refused", False
        elif "agent stopped" in line:
            key, up = "stopped", False
        elif "enrolled with the controller" in line:
            self.counts["enrolled"] += 1
            return
        elif "enrollment attempt failed" in line:
            self.counts["enroll_failed"] += 1
            return
        else:
            return
        self.counts[key] += 1
        m = NODE.search(line)
        if m:
            self.up[m.group(1)] = up

    def down(self):
        return sum(1 for u in self.up.values() if not u)

    def connected(self):
        return sum(1 for u in self.up.values() if u)

    def since(self, before):
        return {k: self.counts[k] - before[k] for k in self.counts}


class Meter:
    """CPU of the controller, the simulators, the broker and the whole box between two
    readings."""

    def __init__(self, run):
        self.run = run
        self.t = time.time()
        self.cpu = self._read()
        self.box = box_cpu()

    def _read(self):
        r = self.run
        ctl = cpu_seconds(r.ctl.pid) if r.ctl else None
        sims = sum(c for c in (cpu_seconds(p.pid) for p in r.sims) if c is not None)
        broker = cpu_seconds(r.mosq.pid) if r.mosq else None
        return {"controller": ctl, "sims": sims, "broker": broker}

    def cores(self):
        """Cores each used since this meter was made."""
        now, box = self._read(), box_cpu()
        dt = max(time.time() - self.t, 1e-6)
        out = {"seconds": dt}
        for k, v in now.items():
            v0 = self.cpu[k]
            out[k] = (v - v0) / dt if v is not None and v0 is not None else None
        out["box"] = (box[0] - self.box[0]) / dt
        ours = sum(out[k] or 0.0 for k in ("controller", "sims", "broker"))
        out["other"] = max(0.0, out["box"] - ours)
        out["controller_cpu_s"] = (now["controller"] - self.cpu["controller"]
                                   if now["controller"] is not None
                                   and self.cpu["controller"] is not None else None)
        return out


# ---------------------------------------------------------------------------------------
# One fleet size through one broker


class Run:
    def __init__(self, args, broker, nodes, procs):
        self.args = args
        self.broker = broker
        self.nodes = nodes
        self.procs = procs
        self.bindir = os.path.abspath(args.bin)
        self.tmp = tempfile.mkdtemp(prefix=f"fleet-bench-{broker}-{nodes}-")
        self.data = os.path.join(self.tmp, "data")
        self.ctl = None
        self.ctl_starts = 0
        self.mosq = None
        self.sims = []
        self.sim_starts = 0
        self.logs = SimLogs()
        self.ctl_args = None
        self.agent_broker = None
        self.agent_ca = None
        self.api = None
        self.peak_rss = 0.0

    def log(self, msg):
        print(f"[{self.broker} {self.nodes}] {msg}", file=sys.stderr, flush=True)

    def bin(self, name):
        return os.path.join(self.bindir, name)

    # -- the broker and the controller --------------------------------------------------

    def pki(self):
        """A CA and a server certificate for 127.0.0.1 (openssl), for Mosquitto over TLS."""
        d = os.path.join(self.tmp, "pki")
        os.makedirs(d)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *cmd: subprocess.run(cmd, cwd=d, check=True, capture_output=True)
        run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=fleet-bench CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey",
            "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "ext.cnf")
        return d

    def start_mosquitto(self):
        mdir = os.path.join(self.tmp, "mosquitto")
        os.makedirs(mdir)
        # Mosquitto starts before the controller has written its accounts: empty files.
        for name in ("passwd", "acl"):
            open(os.path.join(mdir, name), "w").close()
        accounts = subprocess.run([self.bin("metalbus"), "mosquitto-config", "--dir", mdir],
                                  check=True, capture_output=True, text=True).stdout
        port = free_port()
        lines = [f"listener {port} 127.0.0.1"]
        scheme = "mqtt"
        if self.args.tls:
            pki = self.pki()
            lines += [f"certfile {pki}/server.pem", f"keyfile {pki}/server.key"]
            scheme = "mqtts"
            self.agent_ca = f"{pki}/ca.pem"
        # Started as root, Mosquitto drops to its own user, which cannot read the files
        # of a private temp dir.
        if os.geteuid() == 0:
            lines.append("user root")
        lines += ["persistence false", "log_dest stdout", "log_timestamp true", accounts]
        lines += self.args.mosquitto_conf
        conf = os.path.join(self.tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.mosq = self.procs.start("mosquitto", ["mosquitto", "-c", conf],
                                     os.path.join(self.tmp, "mosquitto.log"), self.tmp)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.mosq.poll() is not None:
                    raise RuntimeError(f"mosquitto did not start (see {self.tmp})")
                time.sleep(0.05)
        self.agent_broker = f"{scheme}://127.0.0.1:{port}"
        toml = os.path.join(self.tmp, "controller.toml")
        with open(toml, "w") as f:
            f.write(f'[broker]\nmosquitto_dir = "{mdir}"\n'
                    f'reload_command = ["kill", "-HUP", "{self.mosq.pid}"]\n')
        self.ctl_args = ["--config", toml, "--broker", self.agent_broker,
                         "--http-listen", "127.0.0.1:0"]
        if self.agent_ca:
            self.ctl_args += ["--broker-ca", self.agent_ca]

    def start_controller(self):
        if self.ctl_args is None:
            self.ctl_args = ["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
            if self.args.tls:
                self.ctl_args.append("--mqtt-tls")
        listen = os.path.join(self.data, "listen.json")
        if os.path.exists(listen):
            os.remove(listen)
        self.ctl_starts += 1
        self.ctl = self.procs.start(
            "controller",
            [self.bin("metalbus"), "serve", "--data-dir", self.data] + self.ctl_args,
            os.path.join(self.tmp, f"controller-{self.ctl_starts}.log"), self.tmp)
        started = time.time()
        deadline = started + self.args.timeout
        bound = None
        while bound is None:
            if time.time() > deadline or self.ctl.poll() is not None:
                raise RuntimeError(f"the controller did not start (see {self.tmp})")
            try:
                with open(listen) as f:
                    bound = json.load(f)
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        self.api = bound.get("api") or f"http://{bound['http']}"
        if self.agent_broker is None:
            self.agent_broker = bound["broker"]
        # A restart after kill -9 comes back on the same ports.
        for flag, key in (("--http-listen", "http"), ("--mqtt-listen", "mqtt")):
            if flag in self.ctl_args and key in bound:
                self.ctl_args[self.ctl_args.index(flag) + 1] = bound[key]
        while True:
            try:
                get(f"{self.api}/readyz")
                break
            except (OSError, urllib.error.URLError):
                if time.time() > deadline or self.ctl.poll() is not None:
                    raise RuntimeError(f"the controller did not get ready (see {self.tmp})")
                time.sleep(0.1)
        if self.mosq:
            # Enrolling agents log in to Mosquitto as metalbus-enroll.<token id>: wait
            # until the controller has written that account.
            passwd = os.path.join(self.tmp, "mosquitto", "passwd")
            while "metalbus-enroll." not in open(passwd).read():
                if time.time() > deadline:
                    raise RuntimeError(f"no enrollment account in {passwd}")
                time.sleep(0.1)
        return time.time() - started

    # -- the simulators ---------------------------------------------------------------

    def start_sims(self, interval):
        per = self.args.per_sim
        groups = [(i, min(per, self.nodes - first))
                  for i, first in enumerate(range(0, self.nodes, per))]
        self.sim_starts += 1
        self.sims = []
        for i, count in groups:
            cmd = [self.bin("metalbus-agent"), "simulate", "--nodes", str(count),
                   "--broker", self.agent_broker, "--prefix", f"fb{i}",
                   "--seed", str(i + 1), "--state-dir", os.path.join(self.tmp, "sim"),
                   "--metrics-interval", interval,
                   "--enroll-token-file", os.path.join(self.data, "enroll.token")]
            if self.agent_ca:
                cmd += ["--broker-ca", self.agent_ca]
            path = os.path.join(self.tmp, f"sim{i}-{self.sim_starts}.log")
            self.logs.add(path)
            self.sims.append(self.procs.start("sim", cmd, path, self.tmp))
        return time.time()

    def stop_sims(self):
        """SIGTERM (each agent publishes its clean offline status), and wait until the
        controller counts them offline, so that the next start is timed from zero."""
        self.procs.stop(self.sims, grace=60)
        self.sims = []
        self.logs.poll()
        secs, last = self.wait(lambda s: s[0] == 0, "stopping the simulators")
        if secs is None:
            self.log(f"{last[0] if last else '?'} nodes still counted online after the stop")

    # -- waiting ----------------------------------------------------------------------

    def sample(self):
        """One poll: the controller's counters, the simulators' logs, the peak RSS."""
        self.logs.poll()
        rss, hwm = mem_mb(self.ctl.pid)
        self.peak_rss = max(self.peak_rss, hwm, rss)
        return scrape(self.api)

    def wait(self, done, what):
        """Polls until done(scrape) is true or --timeout; returns (seconds or None, last)."""
        started = time.time()
        last, shown = None, 0.0
        while True:
            if self.ctl.poll() is not None:
                raise RuntimeError(f"the controller exited during {what} (see {self.tmp})")
            s = self.sample()
            if s is not None:
                last = s
                if done(s):
                    return time.time() - started, last
            now = time.time()
            if now - started > self.args.timeout:
                return None, last
            if now - shown >= 10:
                shown = now
                online = last[0] if last else "?"
                self.log(f"{what}: {now - started:.0f} s, controller counts {online} online, "
                         f"simulators {self.logs.connected()} connected / "
                         f"{self.logs.down()} down, RSS {mem_mb(self.ctl.pid)[0]:.0f} MB")
            time.sleep(POLL)

    def wait_online(self, what):
        """Until the controller counts N online and every simulated agent is connected."""
        secs, last = self.wait(
            lambda s: s[0] >= self.nodes and self.logs.connected() >= self.nodes, what)
        return secs, (last[0] if last else 0)

    def window(self, kind):
        """A --window of steady load: cores, messages of `kind` ingested, RSS."""
        s0 = self.sample()
        m = Meter(self)
        time.sleep(self.args.window)
        s1 = self.sample()
        c = m.cores()
        rss, hwm = mem_mb(self.ctl.pid)
        msgs = (s1[1].get(kind, 0) - s0[1].get(kind, 0)) if s0 and s1 else None
        all_msgs = (sum(s1[1].values()) - sum(s0[1].values())) if s0 and s1 else None
        out = {"cores": c, "rss_mb": rss, "peak_rss_mb": self.peak_rss,
               f"{kind}_msgs": msgs, "all_msgs": all_msgs,
               "msgs_per_s": msgs / c["seconds"] if msgs is not None else None}
        if self.mosq:
            out["broker_rss_mb"] = mem_mb(self.mosq.pid)[0]
        if msgs:
            out["us_per_msg"] = c["controller_cpu_s"] / msgs * 1e6
            out["msgs_per_core"] = msgs / c["controller_cpu_s"] if c["controller_cpu_s"] else None
            if c["broker"] is not None:
                out["broker_us_per_msg"] = c["broker"] * c["seconds"] / msgs * 1e6
        return out

    # -- the phases -------------------------------------------------------------------

    def go(self):
        a = self.args
        res = {"broker": self.broker, "nodes": self.nodes, "tmp": self.tmp,
               "simulators": -(-self.nodes // a.per_sim)}
        if self.broker == "mosquitto":
            self.start_mosquitto()
        res["controller_start_s"] = self.start_controller()
        self.log(f"controller up at {self.api}, agents to {self.agent_broker}")

        # start: the whole fleet at once, enrollment included.
        before = dict(self.logs.counts)
        meter = Meter(self)
        self.start_sims(a.metrics_interval)
        secs, online = self.wait_online("start")
        c = meter.cores()
        conn = self.logs.since(before)
        res["start"] = {"online_s": secs, "online": online, "cores": c,
                        "peak_rss_mb": self.peak_rss, "log": conn,
                        "connects_per_agent": conn["connected"] / self.nodes,
                        "lost_per_agent": conn["lost"] / self.nodes}
        self.log(f"start: {online}/{self.nodes} online after "
                 f"{secs if secs is not None else a.timeout:.1f} s; {conn}")
        if secs is None:
            res["steady"] = self.window("metrics")
            self.log("the start did not converge: no kill -9 or ingest phase")
            return res

        time.sleep(SETTLE)
        res["steady"] = self.window("metrics")
        self.log(f"steady: {res['steady']['cores']['controller']:.2f} cores, "
                 f"RSS {res['steady']['rss_mb']:.0f} MB")

        if a.kill9:
            res["kill9"] = self.kill9()

        res["ingest"] = []
        for interval in a.ingest_interval.split(","):
            res["ingest"].append(self.ingest(interval))
        return res

    def kill9(self):
        """kill -9, restart on the same data dir and ports, time until all are back."""
        before = dict(self.logs.counts)
        self.logs.poll()
        self.procs.kill9(self.ctl)
        killed = time.time()
        self.peak_rss = 0.0
        self.start_controller()
        restarted = time.time() - killed

        def back(s):
            # Every agent connected again (by its own log) and heard by the new process.
            self.logs.poll()
            return s[1].get("status", 0) >= self.nodes and self.logs.down() == 0

        meter = Meter(self)
        secs, last = self.wait(back, "after kill -9")
        c = meter.cores()
        conn = self.logs.since(before)
        out = {"back_s": secs + restarted if secs is not None else None,
               "controller_restart_s": restarted,
               "status_heard": int(last[1].get("status", 0)) if last else 0,
               "agents_down": self.logs.down(), "cores": c, "peak_rss_mb": self.peak_rss,
               "log": conn, "connects_per_agent": conn["connected"] / self.nodes,
               "lost_per_agent": conn["lost"] / self.nodes}
        self.log(f"kill -9: back after {out['back_s']} s; {conn}")
        if secs is not None:
            time.sleep(SETTLE)
        return out

    def ingest(self, interval):
        """The simulators again with a shorter metrics interval, and a window."""
        self.stop_sims()
        before = dict(self.logs.counts)
        self.start_sims(interval)
        secs, online = self.wait_online(f"restart at {interval}")
        out = {"interval": interval, "offered_per_s": self.nodes / parse_duration(interval),
               "online_s": secs, "online": online, "log": self.logs.since(before)}
        if secs is None:
            return out
        time.sleep(SETTLE)
        out.update(self.window("metrics"))
        self.log(f"ingest at {interval}: {out['msgs_per_s']:.0f} msgs/s, "
                 f"{out.get('us_per_msg', float('nan')):.1f} µs per message")
        return out


def parse_duration(s):
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m)?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {s!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


# ---------------------------------------------------------------------------------------
# The table


def fmt_s(v, online=None, n=None, timeout=None):
    if v is not None:
        return f"{v:.1f} s"
    if online is not None:
        return f"{online:,}/{n:,} at {timeout:.0f} s"
    return "–"


def num(v, fmt):
    return format(v, fmt) if isinstance(v, (int, float)) else "–"


def ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return f"{a / b:.2f}x"
    return "–"


def rows_for(r, timeout):
    """(label, shown, number for the ratio or None) per row of one run."""
    n = r["nodes"]
    st, steady = r["start"], r.get("steady", {})
    ing = (r.get("ingest") or [{}])[0]
    k9 = r.get("kill9")
    rows = [
        ("all online after (from simulator start)",
         fmt_s(st["online_s"], st["online"], n, timeout), st["online_s"]),
        ("connections per agent during the start",
         num(st["connects_per_agent"], ".2f"), None),
        ("lost connections per agent during the start (of which timeouts)",
         f"{st['lost_per_agent']:.2f} ({st['log']['lost_timeout']:,})", None),
        # Over the whole phase: a start that did not converge ran until --timeout, mostly
        # idle, so no ratio.
        ("credentials refused / enrollment attempts retried during the start",
         f"{st['log'].get('refused', 0):,} / {st['log']['enroll_failed']:,}", None),
        ("controller CPU during the start", num(st["cores"]["controller"], ".2f") + " cores",
         st["cores"]["controller"] if st["online_s"] is not None else None),
        ("controller RSS peak", num(r.get("peak_rss_mb"), ".0f") + " MB", r.get("peak_rss_mb")),
        ("controller RSS at the end of the steady window", num(steady.get("rss_mb"), ".0f") + " MB",
         steady.get("rss_mb")),
        (f"controller CPU steady (metrics every {r['metrics_interval']})",
         num(steady.get("cores", {}).get("controller"), ".3f") + " cores",
         steady.get("cores", {}).get("controller")),
    ]
    if r["broker"] == "mosquitto":
        rows.append(("Mosquitto RSS / CPU steady",
                     f"{num(steady.get('broker_rss_mb'), '.0f')} MB / "
                     f"{num(steady.get('cores', {}).get('broker'), '.3f')} cores", None))
    else:
        rows.append(("Mosquitto RSS / CPU steady", "(in the controller)", None))
    if ing:
        rows += [
            (f"simulators stopped and started again at {ing['interval']}: all online after",
             fmt_s(ing.get("online_s"), ing.get("online"), n, timeout), ing.get("online_s")),
            (f"ingest: offered at {ing['interval']} / applied msgs/s",
             f"{ing['offered_per_s']:,.0f} / {num(ing.get('msgs_per_s'), ',.0f')}", None),
            ("ingest: controller CPU", num(ing.get("cores", {}).get("controller"), ".2f")
             + " cores", ing.get("cores", {}).get("controller")),
            ("ingest: controller CPU per message", num(ing.get("us_per_msg"), ".1f") + " µs",
             ing.get("us_per_msg")),
            ("ingest: messages per controller core-second", num(ing.get("msgs_per_core"), ",.0f"),
             ing.get("msgs_per_core")),
            ("ingest: Mosquitto CPU per message",
             num(ing.get("broker_us_per_msg"), ".1f") + " µs" if r["broker"] == "mosquitto"
             else "(in the controller)", None),
            ("ingest: simulators / other load on the box",
             f"{num(ing.get('cores', {}).get('sims'), '.2f')} / "
             f"{num(ing.get('cores', {}).get('other'), '.2f')} cores", None),
        ]
    if k9:
        rows += [
            ("kill -9: all back after (from the kill)",
             fmt_s(k9["back_s"], n - k9["agents_down"], n, timeout), k9["back_s"]),
            ("kill -9: connections / lost per agent",
             f"{k9['connects_per_agent']:.2f} / {k9['lost_per_agent']:.2f}", None),
            ("kill -9: controller RSS peak after restart", num(k9["peak_rss_mb"], ".0f") + " MB",
             k9["peak_rss_mb"]),
        ]
    rows.append(("other load on the box during the start",
                 num(st["cores"]["other"], ".2f") + " cores", None))
    return rows


def print_tables(results, args):
    for n in sorted({r["nodes"] for r in results}):
        runs = {r["broker"]: r for r in results if r["nodes"] == n and "start" in r}
        if not runs:
            continue
        brokers = [b for b in ("embedded", "mosquitto") if b in runs]
        tables = {b: rows_for(runs[b], args.timeout) for b in brokers}
        both = len(brokers) == 2
        print(f"\n### {n:,} agents ({args.metrics_interval} metrics, "
              f"{'TLS' if args.tls else 'plain MQTT'}, enrollment)\n")
        head = "| | " + " | ".join({"embedded": "embedded", "mosquitto": "Mosquitto"}[b]
                                     for b in brokers)
        print(head + (" | embedded/Mosquitto |" if both else " |"))
        print("|---" * (len(brokers) + 1 + both) + "|")
        labels = [row[0] for row in tables[brokers[0]]]
        for i, label in enumerate(labels):
            cells = []
            for b in brokers:
                match = [row for row in tables[b] if row[0] == label]
                cells.append(match[0] if match else (label, "–", None))
            line = f"| {label} | " + " | ".join(c[1] for c in cells)
            if both:
                line += " | " + (ratio(cells[0][2], cells[1][2]) if cells[0][2] is not None
                                 else "")
            print(line + " |")
        for b in brokers:
            for extra in (runs[b].get("ingest") or [])[1:]:
                print(f"\n{b}, ingest at {extra['interval']}: offered "
                      f"{extra['offered_per_s']:,.0f}/s, applied "
                      f"{num(extra.get('msgs_per_s'), ',.0f')}/s, controller "
                      f"{num(extra.get('cores', {}).get('controller'), '.2f')} cores, "
                      f"{num(extra.get('us_per_msg'), '.1f')} µs per message, "
                      f"{num(extra.get('msgs_per_core'), ',.0f')} per core-second")


# ---------------------------------------------------------------------------------------


def interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--bin", default="target/release",
                    help="dir with the release metalbus and metalbus-agent")
    ap.add_argument("--nodes", default="1000,3000", help="fleet sizes, comma-separated")
    ap.add_argument("--brokers", default="embedded,mosquitto")
    ap.add_argument("--metrics-interval", default="15s",
                    help="the agents' metrics interval for start, steady and kill -9")
    ap.add_argument("--ingest-interval", default="1s",
                    help="metrics interval(s) of the ingest phase, comma-separated")
    ap.add_argument("--window", type=float, default=30.0, help="seconds per measured window")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per phase at most")
    ap.add_argument("--per-sim", type=int, default=5000,
                    help="agents per simulator process (each holds ~2 files per agent)")
    ap.add_argument("--tls", action="store_true", help="agents over mqtts (both brokers)")
    ap.add_argument("--mosquitto-conf", action="append", default=[], metavar="LINE",
                    help="a line added to mosquitto.conf, e.g. 'max_queued_messages 0' "
                         "(repeatable; default: what `metalbus mosquitto-config` prints)")
    ap.add_argument("--kill9", action="store_true",
                    help="also time the convergence after kill -9 and restart of the controller")
    ap.add_argument("--json", metavar="FILE", help="write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, data)")
    ap.add_argument("--table", metavar="FILE",
                    help="only print the tables of an earlier run's --json FILE")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            saved = json.load(f)
        print_tables(saved["runs"], argparse.Namespace(**saved["meta"]["args"]))
        return
    for d in [args.metrics_interval] + args.ingest_interval.split(","):
        parse_duration(d)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for b in brokers:
        if b not in ("embedded", "mosquitto"):
            ap.error(f"unknown broker {b!r}: embedded or mosquitto")
    if "mosquitto" in brokers and not shutil.which("mosquitto"):
        ap.error("mosquitto is not installed (apt-get install mosquitto)")
    for name in ("metalbus", "metalbus-agent"):
        if not os.access(os.path.join(args.bin, name), os.X_OK):
            ap.error(f"no {name} in {args.bin} "
                     "(cargo build --release -p metalbus -p metalbus-agent)")

    # SIGTERM stops the benchmark the way Ctrl-C does: through the finally blocks.
    signal.signal(signal.SIGTERM, interrupted)
    raise_nofile()
    procs = Procs()
    results = []
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
            "args": vars(args)}
    try:
        for n in [int(x) for x in args.nodes.split(",")]:
            for b in brokers:
                run = Run(args, b, n, procs)
                run.log(f"logs and data in {run.tmp}")
                # A failed run keeps its logs; an interrupted one does not (unless --keep).
                keep = args.keep
                try:
                    r = run.go()
                except RuntimeError as e:
                    run.log(f"failed: {e}; its logs stay in {run.tmp}")
                    r = {"broker": b, "nodes": n, "error": str(e), "tmp": run.tmp}
                    keep = True
                finally:
                    procs.stop_all()
                    if not keep and sys.exc_info()[0] is not None:
                        shutil.rmtree(run.tmp, ignore_errors=True)
                r["metrics_interval"] = args.metrics_interval
                r.setdefault("peak_rss_mb", run.peak_rss)
                if "start" in r:
                    r["peak_rss_mb"] = max(r["start"]["peak_rss_mb"],
                                           r.get("steady", {}).get("peak_rss_mb", 0.0))
                results.append(r)
                if not keep:
                    shutil.rmtree(run.tmp, ignore_errors=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"meta": meta, "runs": results}, f, indent=2)
    except KeyboardInterrupt:
        print("interrupted; everything it started is stopped", file=sys.stderr)
        stopped_early = True
    else:
        stopped_early = False
    finally:
        procs.stop_all()
    print_tables(results, args)
    for r in results:
        if "error" in r:
            print(f"\n{r['broker']} {r['nodes']}: {r['error']}")
    if args.json:
        print(f"\nevery figure: {args.json}")
    if stopped_early:
        sys.exit(130)


if __name__ == "__main__":
    main()
