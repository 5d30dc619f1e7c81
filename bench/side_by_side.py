#!/usr/bin/env python3
"""Side-by-side load test of nginx, HAProxy, a bare hyper-util proxy and ipgate.

Each proxy is pinned to core 0; the upstream (nginx answering 200) and the load
generator run on core 1. Rounds alternate the order of the proxies; the tables give the
median of the rounds and every figure as a ratio against the bare proxy and HAProxy
measured in the same run. A second table runs unpinned on both cores.

Run through bench/run.sh (it installs nginx, haproxy, wrk and nghttp2-client when
missing and builds ipgate and the bare proxy in release mode).
"""
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
IPGATE = os.environ.get("IPGATE_BIN", os.path.join(TARGET, "release", "ipgate"))
BARE = os.path.join(TARGET, "release", "examples", "bare_proxy")
DURATION = os.environ.get("DURATION", "10s")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONNS = int(os.environ.get("CONNS", "64"))
CIDRS = int(os.environ.get("CIDRS", "1000000"))
CACHED = int(os.environ.get("CACHED", "100000"))
UPSTREAM_PORT, PROXY_PORT = 19000, 18080
CASES = [c for c in os.environ.get("CASES", "allow,cidr1m,cached100k,h2c").split(",") if c]
# The unpinned table's cases (empty: no unpinned table).
UNPINNED_CASES = [c for c in os.environ.get("UNPINNED_CASES", "allow,cidr1m").split(",") if c]


def sh(cmd, **kw):
    done = subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)
    # wrk reports a broken Lua script on stderr and then runs without it: fail instead.
    if "wrk" in cmd and ".lua" in done.stderr:
        raise RuntimeError(f"wrk script error: {done.stderr.strip()[:300]}")
    return done.stdout


def port_free(port):
    """Nothing listens on `port` (a proxy left over from an earlier run would otherwise
    answer for the next one and every row would measure it)."""
    import socket
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_port(port, timeout=30, h2_only=False):
    """Something answers HTTP on `port` (for an h2-only listener: accepts connections)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if h2_only:
            if not port_free(port):
                return
            time.sleep(0.1)
            continue
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return
        except Exception as e:  # noqa: BLE001 - any answer (even 403) means it is up
            if hasattr(e, "code"):
                return
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def rss_kib(pid):
    total = 0
    children = subprocess.run(["pgrep", "-P", str(pid)], text=True, capture_output=True).stdout
    pids = [pid] + [int(p) for p in children.split()]
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Workdir:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ipgate-bench-")

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)


def gen_cidrs(w):
    """CIDRS random networks (seed 42), never covering 127.0.0.0/8 or 11.0.0.0/8."""
    rnd = random.Random(42)
    seen = set()
    while len(seen) < CIDRS:
        prefix = rnd.choice([16, 20, 24, 24, 24, 28, 32, 32, 32, 32])
        addr = rnd.getrandbits(32) & (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
        if addr >> 24 in (127, 11, 0) or addr >> 28 >= 14:
            continue
        seen.add((addr, prefix))
    nets = [f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{p}" for a, p in seen]
    w.write("cidrs.txt", "\n".join(nets) + "\n")
    w.write("geo.conf", "".join(f"{n} 1;\n" for n in nets))
    return len(nets)


def start(cmd, core, env=None):
    pre = ["taskset", "-c", core] if core else []
    return subprocess.Popen(pre + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def upstream(w):
    conf = w.write("upstream.conf", f"""
worker_processes 1; daemon off; pid {w.path('upstream.pid')}; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UPSTREAM_PORT}; location / {{ return 200 "ok\\n"; }} }} }}
""")
    return ["nginx", "-c", conf, "-p", w.dir]


def nginx(w, case):
    geo = f"geo $blocked {{ default 0; include {w.path('geo.conf')}; }}" if case == "cidr1m" else "geo $blocked { default 0; }"
    # nginx >= 1.25 serves h2c beside HTTP/1.1 with `http2 on`; older ones only with the
    # listen parameter, and then h2c alone.
    old = NGINX_VERSION < (1, 25)
    http2 = "http2 on;" if case == "h2c" and not old else ""
    listen_h2 = " http2" if case == "h2c" and old else ""
    conf = w.write(f"nginx-{case}.conf", f"""
worker_processes 1; daemon off; pid {w.path('nginx.pid')}; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; {geo}
  upstream app {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 128; }}
  server {{ listen 127.0.0.1:{PROXY_PORT}{listen_h2}; {http2}
    location / {{ if ($blocked) {{ return 403; }}
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}
""")
    return ["nginx", "-c", conf, "-p", w.dir]


def haproxy(w, case):
    acl = f"http-request deny if {{ src -f {w.path('cidrs.txt')} }}" if case == "cidr1m" else ""
    proto = "proto h2" if case == "h2c" else ""
    conf = w.write(f"haproxy-{case}.cfg", f"""
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{PROXY_PORT} {proto}
  option forwardfor
  {acl}
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:{UPSTREAM_PORT}
""")
    return ["haproxy", "-f", conf]


def bare(w, case):
    return [BARE, f"127.0.0.1:{PROXY_PORT}", f"http://127.0.0.1:{UPSTREAM_PORT}"]


def ipgate(w, case):
    feed = ""
    rules = "rules: []\n"
    extra = ""
    if case == "cidr1m":
        feed = f"lists:\n  feeds:\n    - {{ name: deny, source: '{w.path('cidrs.txt')}', refresh: 24h }}\n"
        rules = "rules:\n  - { name: deny, when: { in_list: deny }, action: block }\n"
    if case == "cached100k":
        rep = w.write("rep.yaml", "11.0.0.0/8: { status: suspicious, score: 10 }\n")
        extra = (f"client_ip: {{ trusted_proxies: [127.0.0.1/32] }}\n"
                 f"providers: {{ file: {{ path: '{rep}' }} }}\ncache: {{ max_entries: 1000000 }}\n")
        rules = "rules:\n  - { name: block-score, when: { score_above: 70 }, action: block }\n"
    conf = w.write(f"ipgate-{case}.yaml", f"""listen: 127.0.0.1:{PROXY_PORT}
upstream: http://127.0.0.1:{UPSTREAM_PORT}
limits: {{ max_connections: 10000 }}
{extra}{feed}{rules}default: allow
""")
    return [IPGATE, "run", "-c", conf]


def nginx_version():
    out = subprocess.run(["nginx", "-v"], text=True, capture_output=True).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


NGINX_VERSION = nginx_version() if shutil.which("nginx") else (0, 0)

PROXIES = {"haproxy": haproxy, "nginx": nginx, "bare": bare, "ipgate": ipgate}
# IPGATE_BEFORE=path/to/an/older/ipgate adds it as a fifth proxy ("before"), so a change
# is measured against the previous build in the same run.
BEFORE = os.environ.get("IPGATE_BEFORE")
if BEFORE:
    def before(w, case):
        return [BEFORE] + ipgate(w, case)[1:]
    PROXIES["before"] = before


def wrk(w, core, threads, script=None):
    cmd = (["taskset", "-c", core] if core else []) + [
        "wrk", f"-t{threads}", f"-c{CONNS}", f"-d{DURATION}", "--latency"]
    if script:
        cmd += ["-s", script]
    out = sh(cmd + [f"http://127.0.0.1:{PROXY_PORT}/"])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        v = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        lat[pct] = v
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} requests were not answered 200: {out}")
    return rps, lat["50"], lat["99"]


def h2load(core):
    cmd = (["taskset", "-c", core] if core else []) + [
        "h2load", "-c", str(CONNS), "-m", "10", "-D", DURATION.rstrip("s"),
        f"http://127.0.0.1:{PROXY_PORT}/"]
    out = sh(cmd)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    fails = re.search(r"(\d+) failed", out)
    if fails and int(fails.group(1)) > 0:
        raise RuntimeError(out)
    return rps, float("nan"), float("nan")


def warm_cached(w):
    """Each of the CACHED clients once, so every reputation is cached before measuring."""
    script = w.write("warm.lua", f"""
counter = 0
request = function()
  counter = counter + 1
  local i = counter % {CACHED}
  return wrk.format("GET", "/", {{["X-Forwarded-For"] = string.format("11.%d.%d.%d", math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)}})
end
""")
    return script


def run(w, cases, pinned):
    proxy_core, load_core = ("0", "1") if pinned else (None, None)
    threads = 1 if pinned else 2
    up = start(upstream(w), load_core)
    wait_port(UPSTREAM_PORT)
    results = {}
    try:
        for case in cases:
            names = ([n for n in PROXIES if n in ("bare", "ipgate", "before")]
                     if case == "cached100k" else list(PROXIES))
            for rnd in range(ROUNDS):
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                for name in order:
                    deadline = time.time() + 15
                    while not port_free(PROXY_PORT) and time.time() < deadline:
                        time.sleep(0.1)
                    if not port_free(PROXY_PORT):
                        raise RuntimeError(f"port {PROXY_PORT} is still taken before {name}")
                    p = start(PROXIES[name](w, case), proxy_core)
                    try:
                        wait_port(PROXY_PORT, timeout=120, h2_only=case == "h2c")
                        if p.poll() is not None:
                            raise RuntimeError(f"{name} exited ({p.returncode}) instead of listening")
                        idle = rss_kib(p.pid)
                        # Both proxies of the cached case get the same requests (clients spread
                        # over CACHED addresses in X-Forwarded-For); only the ipgate builds need the warm-up.
                        script = warm_cached(w) if case == "cached100k" else None
                        if script and name in ("ipgate", "before"):
                            # Warm: every client once (and the measured run uses the same script).
                            sh(["wrk", "-t1", "-c8", "-d3s", "-s", script, f"http://127.0.0.1:{PROXY_PORT}/"])
                        if case == "h2c":
                            r = h2load(load_core)
                        else:
                            r = wrk(w, load_core, threads, script)
                        rss = rss_kib(p.pid)
                        results.setdefault((case, name), []).append((*r, rss, idle))
                        print(f"  {time.strftime('%H:%M:%S')} {case:<11} {name:<8} round {rnd + 1}: {r[0]:>9.0f} req/s  "
                              f"p50 {r[1]:.2f} ms  p99 {r[2]:.2f} ms  RSS idle {idle / 1024:.1f} MiB, loaded {rss / 1024:.1f} MiB", flush=True)
                    except Exception as e:  # noqa: BLE001 - a proxy that cannot run the case is reported
                        print(f"  {time.strftime('%H:%M:%S')} {case:<11} {name:<8} round {rnd + 1}: failed: {str(e)[:200]}", flush=True)
                    finally:
                        stop(p)
    finally:
        stop(up)
    return results


def table(results, title):
    lines = [f"### {title}", "",
             "| case | proxy | req/s (median) | vs bare | vs HAProxy | p50 ms | p99 ms | p99 vs bare | RSS idle MiB | RSS loaded MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cases = []
    for (case, _) in results:
        if case not in cases:
            cases.append(case)
    for case in cases:
        med = {name: [statistics.median(x[i] for x in rows) for i in range(5)]
               for (c, name), rows in results.items() if c == case}
        base = med.get("bare")
        ha = med.get("haproxy")
        for name in ["haproxy", "nginx", "bare", "before", "ipgate"]:
            if name not in med:
                continue
            rps, p50, p99, rss, idle = med[name]
            ratio = f"{rps / base[0]:.2f}" if base else "-"
            vs_ha = f"{rps / ha[0]:.2f}" if ha else "-"
            p99r = f"{p99 / base[2]:.2f}" if base and base[2] == base[2] and base[2] > 0 else "-"
            ms = lambda v: f"{v:.2f}" if v == v else "–"  # h2load gives no percentiles
            lines.append(f"| {case} | {name} | {rps:,.0f} | {ratio} | {vs_ha} | {ms(p50)} | {ms(p99)} | {p99r} | {idle / 1024:.1f} | {rss / 1024:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    for tool in ("nginx", "haproxy", "wrk", "h2load", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run bench/run.sh, which installs it")
    w = Workdir()
    n = gen_cidrs(w) if "cidr1m" in CASES + UNPINNED_CASES else 0
    machine = sh(["uname", "-srm"]).strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"{time.strftime('%Y-%m-%d')} · {machine} · {cpu} · {os.cpu_count()} cores · {n} CIDRs · "
          f"wrk -c{CONNS} -d{DURATION} · {ROUNDS} rounds", flush=True)
    pinned = run(w, CASES, pinned=True)
    unpinned = run(w, UNPINNED_CASES, pinned=False)
    report = (f"Run on {time.strftime('%Y-%m-%d')}: {machine}, {cpu}, {os.cpu_count()} cores; "
              f"{n} CIDRs; wrk -c{CONNS} -d{DURATION}; h2load -c{CONNS} -m10; median of {ROUNDS} rounds.\n\n"
              + table(pinned, "Pinned: each proxy on core 0, upstream and load on core 1")
              + "\n" + table(unpinned, "Unpinned: proxies, upstream and load share both cores"))
    print(report)
    out = os.environ.get("REPORT")
    if out:
        with open(out, "w") as f:
            f.write(report)
    with open(w.path("results.json"), "w") as f:
        json.dump({f"{c}/{n}": v for (c, n), v in {**pinned}.items()}, f)
    shutil.rmtree(w.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
