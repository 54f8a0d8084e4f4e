#!/usr/bin/env python3
"""Load benchmark: mtls-gateway against nginx as an mTLS egress gateway, on loopback.

Started by `make bench` (see bench/load/README.md). Everything it starts it stops; every step
is bounded in time. Prints one table and writes the raw output to the results file.

Set-up (generated once under WORK, default target/bench-load):
  - a partner CA and a partner server certificate for localhost;
  - a client CA and one EC P-256 client certificate per account (acct0..acct9);
  - a partner: nginx, HTTPS on 127.0.0.1:8443, `ssl_verify_client on` against the client CA,
    answering "<client subject DN> <path>"; and 127.0.0.1:8444, HTTPS without client
    certificates, for the direct baseline;
  - the gateways under test, one at a time, on 127.0.0.1:18080:
      mtls-gateway  10 accounts x 100 URLs = 1 000 static mappings (PEM files, partner CA);
      nginx safe    one `upstream` block (with keepalive) per client certificate;
      nginx unsafe  one shared `upstream` block: a pooled connection made with one account's
                    certificate is reused for another account's request (reference only).
"""

import argparse
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ACCOUNTS = 10
URLS = 100
PARTNER_PORT = 8443
DIRECT_PORT = 8444
GATEWAY_PORT = 18080
ADMIN_PORT = 19090
CLK_TCK = os.sysconf("SC_CLK_TCK")

OUT = []


def say(line=""):
    print(line, flush=True)
    OUT.append(line)


# ---------------------------------------------------------------------------------------------
# Certificates


def make_certificates(work, big):
    """Partner and client PKI; `big` client certificates for the 10 000-certificate run."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    pki = os.path.join(work, "pki")
    os.makedirs(pki, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=60)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(path, key):
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))

    def write_cert(path, cert):
        with open(path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(ca_key, ca_cert, cn, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    if not os.path.exists(os.path.join(pki, "done")):
        pkey, pcert = ca("Bench Partner CA")
        write_cert(os.path.join(pki, "partner-ca.pem"), pcert)
        skey, scert = leaf(pkey, pcert, "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                           [x509.DNSName("localhost"),
                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        write_key(os.path.join(pki, "server.key"), skey)
        write_cert(os.path.join(pki, "server.crt"), scert)
        ckey, ccert = ca("Bench Client CA")
        write_cert(os.path.join(pki, "client-ca.pem"), ccert)
        write_key(os.path.join(pki, "client-ca.key"), ckey)
        for a in range(ACCOUNTS):
            k, c = leaf(ckey, ccert, f"client-acct{a}", ExtendedKeyUsageOID.CLIENT_AUTH)
            write_key(os.path.join(pki, f"acct{a}.key"), k)
            write_cert(os.path.join(pki, f"acct{a}.crt"), c)
        open(os.path.join(pki, "done"), "w").close()

    bigdir = os.path.join(work, "pki-big")
    marker = os.path.join(bigdir, f"done-{big}")
    if big and not os.path.exists(marker):
        os.makedirs(bigdir, exist_ok=True)
        t0 = time.monotonic()
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        with open(os.path.join(pki, "client-ca.key"), "rb") as f:
            ckey = load_pem_private_key(f.read(), None)
        with open(os.path.join(pki, "client-ca.pem"), "rb") as f:
            ccert = x509.load_pem_x509_certificate(f.read())
        for i in range(big):
            k, c = leaf(ckey, ccert, f"client-big{i}", ExtendedKeyUsageOID.CLIENT_AUTH)
            write_key(os.path.join(bigdir, f"c{i}.key"), k)
            write_cert(os.path.join(bigdir, f"c{i}.crt"), c)
        open(marker, "w").close()
        say(f"# generated {big} client certificates in {time.monotonic() - t0:.1f} s")
    # nginx workers may run as another user: keys readable by the bench only matter on loopback.
    for d in (pki,):
        for f in os.listdir(d):
            os.chmod(os.path.join(d, f), 0o644)
    return pki, bigdir


# ---------------------------------------------------------------------------------------------
# Configurations


def gateway_config(work, pki, tag, mappings):
    d = os.path.join(work, f"gw-{tag}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "store"))
    cfg = {
        "store": {"kind": "local", "path": os.path.join(d, "store")},
        "log": {"format": "text", "level": "warn,vaultrs=off,rustify=off"},
        "lifecycle": {"grace_period_seconds": 1, "shutdown_timeout_seconds": 1,
                      "runtime_dir": os.path.join(d, "run"), "threads": 1},
        "refresh": {"poll_seconds": 2, "watch_config": False},
        "proxy": {"listen": f"127.0.0.1:{GATEWAY_PORT}", "throttle": {"per_second": 0}},
        "admin": {"listen": f"127.0.0.1:{ADMIN_PORT}", "throttle": {"per_second": 0}},
        "auth": {"enabled": False},
        "mappings": mappings,
    }
    path = os.path.join(d, "config.yaml")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)  # JSON is YAML
    return path


def load_mappings(pki, host="localhost"):
    return [{
        "account": f"acct{a}", "service": "BENCH",
        "url": f"https://{host}:{PARTNER_PORT}/acct{a}/u{u}",
        "certificate": {"cert_file": os.path.join(pki, f"acct{a}.crt"),
                        "key_file": os.path.join(pki, f"acct{a}.key")},
        "ca_file": os.path.join(pki, "partner-ca.pem"),
    } for a in range(ACCOUNTS) for u in range(URLS)]


def big_mappings(pki, bigdir, n):
    return [{
        "account": f"big{i % 100}", "service": "BENCH",
        "url": f"https://localhost:{PARTNER_PORT}/big/c{i}",
        "certificate": {"cert_file": os.path.join(bigdir, f"c{i}.crt"),
                        "key_file": os.path.join(bigdir, f"c{i}.key")},
        "ca_file": os.path.join(pki, "partner-ca.pem"),
    } for i in range(n)]


NGINX_COMMON = """worker_processes 1;
daemon off;
{user}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
{body}
}}
"""


def nginx_conf(work, tag, body):
    d = os.path.join(work, f"nginx-{tag}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    user = "user root root;" if os.geteuid() == 0 else ""
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(NGINX_COMMON.format(d=d, user=user, body=body))
    return path


def partner_conf(work, pki, keepalive):
    ka = "keepalive_timeout 75s;" if keepalive else "keepalive_timeout 0;"
    body = f"""
  {ka}
  ssl_certificate {pki}/server.crt;
  ssl_certificate_key {pki}/server.key;
  ssl_protocols TLSv1.2 TLSv1.3;
  default_type text/plain;
  server {{
    listen 127.0.0.1:{PARTNER_PORT} ssl;
    ssl_client_certificate {pki}/client-ca.pem;
    ssl_verify_client on;
    location / {{ return 200 "$ssl_client_s_dn $uri\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{DIRECT_PORT} ssl;
    location / {{ return 200 "direct $uri\\n"; }}
  }}"""
    return nginx_conf(work, "partner-ka" if keepalive else "partner-close", body)


def gateway_nginx_conf(work, pki, safe, session_reuse=True):
    maps = ["  map $http_x_mtls_account $bench_upstream {"]
    maps += [f"    acct{a} acct{a};" for a in range(ACCOUNTS)]
    maps += ["    default unknown;", "  }", "  map $http_x_mtls_account $bench_cert {"]
    maps += [f"    acct{a} {pki}/acct{a}.crt;" for a in range(ACCOUNTS)]
    maps += ["  }", "  map $http_x_mtls_account $bench_key {"]
    maps += [f"    acct{a} {pki}/acct{a}.key;" for a in range(ACCOUNTS)]
    maps += ["  }"]
    if safe:
        ups = "\n".join(
            f"  upstream acct{a} {{ server 127.0.0.1:{PARTNER_PORT}; keepalive 64; "
            f"keepalive_requests 1000000; }}" for a in range(ACCOUNTS))
        target = "$bench_upstream"
    else:
        ups = (f"  upstream shared {{ server 127.0.0.1:{PARTNER_PORT}; keepalive 64; "
               f"keepalive_requests 1000000; }}")
        target = "shared"
    body = "\n".join(maps) + "\n" + ups + f"""
  server {{
    listen 127.0.0.1:{GATEWAY_PORT};
    location / {{
      if ($bench_cert = "") {{ return 403; }}
      proxy_pass https://{target}$uri$is_args$args;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost:{PARTNER_PORT};
      proxy_ssl_certificate $bench_cert;
      proxy_ssl_certificate_key $bench_key;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {pki}/partner-ca.pem;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_ssl_session_reuse {"on" if session_reuse else "off"};
    }}
  }}"""
    tag = ("gw-safe" if safe else "gw-unsafe") + ("" if session_reuse else "-noreuse")
    return nginx_conf(work, tag, body)


# ---------------------------------------------------------------------------------------------
# Processes


def cpus():
    return len(os.sched_getaffinity(0))


def pinned(cmd, cpu):
    if shutil.which("taskset") and cpus() >= 2:
        return ["taskset", "-c", str(cpu)] + cmd
    return cmd


class Proc:
    def __init__(self, name, cmd, log):
        self.name = name
        self.log = open(log, "w")
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def pids(self):
        """The process and its children (nginx workers)."""
        pids = [self.p.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == self.p.pid:
                            pids.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
        return pids

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except OSError:
                pass
        return total / CLK_TCK

    def status_kib(self, key):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(key + ":"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=5)
        self.log.close()


def wait_port(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise SystemExit(f"{proc.name} exited early (code {proc.p.returncode}); "
                             f"see {proc.log.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{proc.name} did not listen on {port} within {timeout} s")


def probe(account="acct0", url=0, host="localhost", port=GATEWAY_PORT):
    """One request as wrk sends it; returns (status, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    path = f"http://{host}:{PARTNER_PORT}/acct{account[4:]}/u{url}"
    c.request("GET", path, headers={"Host": f"{host}:{PARTNER_PORT}",
                                    "x-mtls-account": account, "x-mtls-service": "BENCH"})
    r = c.getresponse()
    body = r.read().decode(errors="replace")
    c.close()
    return r.status, body


def wait_gateway_ready(proc, timeout=120):
    wait_port(ADMIN_PORT, proc, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                wait_port(GATEWAY_PORT, proc, timeout)
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"the gateway was not ready within {timeout} s; see {proc.log.name}")


# ---------------------------------------------------------------------------------------------
# Runs


def wrk(args, url, form, close, seconds, script, host="localhost"):
    env = dict(os.environ, BENCH_FORM=form, BENCH_ACCOUNTS=str(ACCOUNTS), BENCH_URLS=str(URLS),
               BENCH_CLOSE="1" if close else "0", BENCH_PARTNER=f"{host}:{PARTNER_PORT}")
    cmd = pinned(["wrk", "-t", str(args.threads), "-c", str(args.connections),
                  "-d", f"{seconds}s", "--timeout", "5s", "-s", script, url], 1)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}, out
    raise SystemExit(f"wrk printed no RESULT line:\n{out}")


def measure(args, label, proc, url, form, close, script, host="localhost"):
    wrk(args, url, form, close, args.warmup, script, host)
    before = proc.cpu_seconds() if proc else None
    r, raw = wrk(args, url, form, close, args.duration, script, host)
    after = proc.cpu_seconds() if proc else None
    r["label"] = label
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["cpu_per_10k"] = (after - before) / r["requests"] * 10_000 if proc else None
    r["hwm_mib"] = proc.status_kib("VmHWM") / 1024 if proc else None
    r["errors"] = sum(r[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    OUT.append(f"## raw wrk output: {label}\n{raw.rstrip()}")
    return r


def run_scenario(args, work, pki, gw_bin, gw_cfgs, script, close):
    partner = Proc("partner", pinned(["nginx", "-c", partner_conf(work, pki, not close)], 1),
                   os.path.join(work, "partner.log"))
    rows = []
    try:
        wait_port(PARTNER_PORT, partner)
        wait_port(DIRECT_PORT, partner)
        rows.append(measure(args, "direct (wrk -> partner, TLS, no client cert)", None,
                            f"https://127.0.0.1:{DIRECT_PORT}", "origin", close, script))

        for label, host, gw_cfg in gw_cfgs:
            gw = Proc(label, pinned([gw_bin, "run", "--config", gw_cfg], 0),
                      os.path.join(work, "gateway.log"))
            try:
                wait_gateway_ready(gw)
                status, body = probe(host=host)
                if status != 200 or "CN=client-acct0" not in body:
                    raise SystemExit(f"{label} probe failed: {status} {body!r}")
                rows.append(measure(args, label, gw, f"http://127.0.0.1:{GATEWAY_PORT}",
                                    "absolute", close, script, host))
            finally:
                gw.stop()

        variants = [(True, True, "nginx safe (upstream per cert)"),
                    (False, True, "nginx UNSAFE (shared upstream)")]
        if close:
            # nginx resumes upstream TLS sessions (proxy_ssl_session_reuse on, its default);
            # pingora on rustls does a full handshake every time. Both, for comparison.
            variants.append((True, False, "nginx safe, proxy_ssl_session_reuse off"))
        for safe, reuse, label in variants:
            conf = gateway_nginx_conf(work, pki, safe, reuse)
            ng = Proc(label, pinned(["nginx", "-c", conf], 0),
                      os.path.join(work, "nginx-gateway.log"))
            try:
                wait_port(GATEWAY_PORT, ng)
                status, body = probe()
                if status != 200 or "CN=client-acct0" not in body:
                    raise SystemExit(f"{label} probe failed: {status} {body!r}")
                rows.append(measure(args, label, ng, f"http://127.0.0.1:{GATEWAY_PORT}",
                                    "absolute", close, script))
            finally:
                ng.stop()
    finally:
        partner.stop()
    return rows


def idle_rss(work, pki, gw_bin, tag, mappings):
    cfg = gateway_config(work, pki, tag, mappings)
    t0 = time.monotonic()
    gw = Proc(f"mtls-gateway ({tag})", pinned([gw_bin, "run", "--config", cfg], 0),
              os.path.join(work, f"gateway-{tag}.log"))
    try:
        wait_gateway_ready(gw, timeout=300)
        ready = time.monotonic() - t0
        time.sleep(1.5)
        return gw.status_kib("VmRSS") / 1024, gw.status_kib("VmHWM") / 1024, ready
    finally:
        gw.stop()


def fmt(v, spec):
    width = int(spec.split(".")[0])
    return format("-", f">{width}") if v is None else format(v, spec)


def table(title, rows):
    say(f"\n### {title}")
    say(f"{'':46} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU s/10k':>10} "
        f"{'peak RSS MiB':>13} {'errors':>7} {'wrong identity':>15}")
    for r in rows:
        say(f"{r['label']:46} {r['rps']:9.0f} {r['p50_us'] / 1000:8.2f} "
            f"{r['p99_us'] / 1000:8.2f} {fmt(r['cpu_per_10k'], '10.3f')} "
            f"{fmt(r['hwm_mib'], '13.1f')} {r['errors']:7d} "
            f"{str(r['wrong_identity']) + '/' + str(r['checked']):>15}")
    ng = next(r for r in rows if r["label"].startswith("nginx safe"))
    for gw in (r for r in rows if r["label"].startswith("mtls-gateway")):
        label = "ratio " + gw["label"].replace("mtls-gateway", "gateway") + " / nginx safe"
        say(f"{label:46} {gw['rps'] / ng['rps']:9.2f} "
            f"{gw['p50_us'] / max(ng['p50_us'], 1):8.2f} "
            f"{gw['p99_us'] / max(ng['p99_us'], 1):8.2f} "
            f"{gw['cpu_per_10k'] / ng['cpu_per_10k']:10.2f} "
            f"{gw['hwm_mib'] / ng['hwm_mib']:13.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", default="target/release/mtls-gateway")
    ap.add_argument("--work", default="target/bench-load")
    ap.add_argument("--results", default=None, help="file for the raw output")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--big", type=int, default=10_000, help="certificates for the RSS run")
    args = ap.parse_args()

    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    gw_bin = os.path.abspath(args.gateway)
    script = os.path.abspath(os.path.join(os.path.dirname(__file__), "rotate.lua"))
    results = args.results or f"benches/results/load-{datetime.date.today()}.txt"

    say(f"# mtls-gateway load benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}")
    say(f"# host: {os.uname().nodename} {os.uname().release}, {cpus()} CPUs; "
        f"{subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}; "
        f"{subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.splitlines()[0]}")
    say(f"# wrk -t{args.threads} -c{args.connections}, {args.warmup} s warm-up then "
        f"{args.duration} s measured; gateways on CPU 0, partner + wrk on CPU 1"
        if cpus() >= 2 else "# fewer than 2 CPUs: nothing pinned")
    say(f"# {ACCOUNTS} accounts x {URLS} URLs = {ACCOUNTS * URLS} mappings; EC P-256 "
        f"certificates; HTTP/1.1 to the partner")

    pki, bigdir = make_certificates(work, args.big)
    gw_cfgs = [
        ("mtls-gateway", "localhost", gateway_config(work, pki, "load", load_mappings(pki))),
        # Diagnostic: the same mappings with the partner as an IP literal, which
        # tokio::net::lookup_host answers without getaddrinfo on the blocking pool.
        ("mtls-gateway, partner as 127.0.0.1", "127.0.0.1",
         gateway_config(work, pki, "load-ip", load_mappings(pki, "127.0.0.1"))),
    ]

    rows = run_scenario(args, work, pki, gw_bin, gw_cfgs, script, close=False)
    table("keep-alive: pooled upstream connections, keep-alive downstream", rows)
    rows = run_scenario(args, work, pki, gw_bin, gw_cfgs, script, close=True)
    table("new connection per request: Connection: close downstream, the partner "
          "closes every upstream connection (keepalive_timeout 0)", rows)

    say("\n### mtls-gateway memory, no traffic (VmRSS 1.5 s after /readyz; startup to ready)")
    for tag, maps in (("empty", []), ("1k", load_mappings(pki)),
                      (f"{args.big}", big_mappings(pki, bigdir, args.big))):
        rss, hwm, ready = idle_rss(work, pki, gw_bin, tag, maps)
        say(f"{len(maps):>6} static mappings: RSS {rss:6.1f} MiB (peak {hwm:6.1f} MiB), "
            f"ready in {ready:5.1f} s")

    os.makedirs(os.path.dirname(results) or ".", exist_ok=True)
    with open(results, "w") as f:
        f.write("\n".join(OUT) + "\n")
    print(f"\nraw output written to {results}")


if __name__ == "__main__":
    sys.exit(main())
