#!/usr/bin/env python3
"""Turns the raw results of bench/compare.sh (lines "server=S phase=P k=v ...") into markdown
tables: every run, then the issue-6 summary with the turnd/coturn ratios and turnd's ratio
to each floor (floor, floor_batch, floor_gso: turnd-floor plain, --batch, --batch --gso)."""

import argparse
import sys

# The floor forwarders (turnd-floor without, with --batch, with --batch --gso), in the order
# the tables list them.
FLOORS = ("floor", "floor_batch", "floor_gso")

def load(path):
    header, rows = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("#"):
                header.append(line[1:].strip())
            elif line.startswith("server="):
                rows.append(dict(kv.split("=", 1) for kv in line.split() if "=" in kv))
    return header, rows


def num(r, k):
    try:
        return float(r.get(k, ""))
    except ValueError:
        return None


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def cores(r, k):
    """CPU seconds over the sending time: how many cores the process kept busy."""
    c, d = num(r, k), num(r, "duration")
    return "-" if c is None or not d else f"{c / d:.2f}"


def transport(r):
    """The clients' transport ("udp" for results without the key)."""
    return r.get("transport", "udp").lower()


def shape(r):
    """The load shape of a run: packets per burst and whether GSO was on ("1", "0")."""
    return r.get("burst", "1"), r.get("gso", "0")


def floor_table(header):
    """The kernel-floor lines of the header ("kernel floor: syscall-cost k=v ...") as a
    table, if there are any."""
    cases = []
    for h in header:
        if h.startswith("kernel floor: syscall-cost "):
            kv = dict(x.split("=", 1) for x in h.split() if "=" in x)
            if "case" in kv:
                cases.append(kv)
    if not cases:
        return
    print()
    print(f"Kernel floor (turnd-floor --syscall-cost: one thread, sendmmsg + recvmmsg of "
          f"{cases[0].get('size', '200')}-byte datagrams on loopback, no server):")
    print()
    print("| case | sockets | datagrams per message (GSO) | GRO | CPU µs per datagram sent and received |")
    print("|---|---:|---:|---|---:|")
    for c in cases:
        print(f"| {c['case']} | {c.get('sockets', '?')} | {c.get('segments', '?')} | "
              f"{'on' if c.get('gro') == '1' else 'off'} | "
              f"{fmt(num(c, 'cpu_us_per_datagram'), 2)} |")


def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--matrix-rate", type=int, default=100000)
    ap.add_argument("results")
    args = ap.parse_args()
    header, rows = load(args.results)
    servers = [s for s in FLOORS + ("turnd", "turnd_notel", "coturn")
               if any(r["server"] == s for r in rows)]
    floors = [s for s in FLOORS if s in servers]
    for h in header:
        # The kernel-floor cases get their own table below.
        if not h.startswith("kernel floor: syscall-cost case="):
            print(f"> {h}  ")
    # Burst and GSO columns when the results carry them (turnd-load --burst / --gso).
    shaped = any("burst" in r for r in rows)
    floor_table(header)
    print()
    print("| server | allocs | mode | topology |" + (" burst | gso |" if shaped else "")
          + " offered | sent pps | delivered pps | loss % "
          "| p50 µs | p99 µs | p99.9 µs | server CPU µs/relayed pkt | server cores | tool cores |")
    print("|---|---:|---|---|" + ("---:|---|" if shaped else "")
          + "---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = r.get("rate", "?")
        offered = "flat out" if rate == "0" else f"{int(rate):,}"
        over = "" if transport(r) == "udp" else f" over {transport(r)}"
        burst, gso = shape(r)
        cols = f" {burst} | {'on' if gso == '1' else 'off'} |" if shaped else ""
        if r.get("failed"):
            print(f"| {r['server']} | {r.get('allocations')} | {r.get('mode')}{over} | "
                  f"{r.get('topology')} |{cols} {offered} | failed | | | | | | | | |")
            continue
        print(f"| {r['server']} | {r['allocations']} | {r['mode'].lower()}{over} | "
              f"{r['topology'].lower()} |{cols} {offered} | {fmt(num(r, 'offered_pps'), 0)} | "
              f"{fmt(num(r, 'delivered_pps'), 0)} | {fmt(num(r, 'loss_pct'), 2)} | "
              f"{fmt(num(r, 'p50_us'))} | {fmt(num(r, 'p99_us'))} | {fmt(num(r, 'p999_us'))} | "
              f"{fmt(num(r, 'cpu_s_per_mpkt'), 2)} | {cores(r, 'server_cpu_s')} | "
              f"{cores(r, 'tool_cpu_s')} |")

    def base(r):
        return (r.get("allocations") == "100" and r.get("mode", "").lower() == "channel"
                and r.get("topology", "").lower() == "peer" and not r.get("failed")
                and transport(r) == "udp")

    def at_rate(s):
        for r in rows:
            if r["server"] == s and base(r) and r.get("rate") == str(args.matrix_rate):
                return r
        return None

    cpu, best, p99 = {}, {}, {}
    for s in servers:
        r = at_rate(s)
        cpu[s] = num(r, "cpu_s_per_mpkt") if r else None
        p99[s] = num(r, "p99_us") if r else None
        ok = [num(r, "delivered_pps") for r in rows
              if r["server"] == s and base(r) and (num(r, "loss_pct") or 0) < 1.0
              and num(r, "delivered_pps") is not None]
        best[s] = max(ok) if ok else None

    shapes = sorted({shape(r) for r in rows if transport(r) == "udp" and not r.get("failed")})
    shape_text = ""
    if shaped and shapes:
        shape_text = ", " + " / ".join(
            f"bursts of {b}{' with GSO' if g == '1' else ''}" for b, g in shapes)
    print()
    print(f"Summary (100 allocations, {args.matrix_rate:,} pps offered where a rate applies, "
          f"channel mode, echo peers, 200-byte payloads{shape_text}):")
    print()
    cols = " | ".join(servers)
    # turnd against each floor present: how far above the kernel's cost for this traffic
    # (floor_gso is the fair floor for bursts: it uses the offloads turnd uses).
    floor_cols = "".join(f" turnd/{f} |" for f in floors)
    print(f"| metric | {cols} | turnd/coturn | target |{floor_cols}")
    print("|---|" + "---:|" * len(servers) + "---:|---|" + "---:|" * len(floors))
    for name, d, digits, target in (
        ("server CPU per relayed packet (µs)", cpu, 2, "≤ 0.5"),
        ("highest delivered rate with < 1% loss (pps)", best, 0, "≥ 2"),
        ("p99 round-trip latency (µs)", p99, 1, "≤ 1"),
    ):
        vals = " | ".join(fmt(d.get(s), digits) for s in servers)
        floor_vals = "".join(f" {ratio(d.get('turnd'), d.get(f))} |" for f in floors)
        print(f"| {name} | {vals} | {ratio(d.get('turnd'), d.get('coturn'))} | {target} |"
              f"{floor_vals}")

    # CPU per relayed packet across the matrix, turnd against coturn.
    keys = []
    for r in rows:
        if r.get("failed") or r.get("rate") != str(args.matrix_rate) or transport(r) != "udp":
            continue
        k = (r["allocations"], r["mode"].lower(), r["topology"].lower())
        if k not in keys:
            keys.append(k)
    if keys:
        print()
        print(f"CPU per relayed packet (µs) at {args.matrix_rate:,} pps offered{shape_text}:")
        print()
        print(f"| allocs | mode | topology | {cols} | turnd/coturn |")
        print("|---:|---|---|" + "---:|" * len(servers) + "---:|")
        for k in keys:
            v = {}
            for s in servers:
                for r in rows:
                    if (r["server"] == s and not r.get("failed") and transport(r) == "udp"
                            and r.get("rate") == str(args.matrix_rate)
                            and (r["allocations"], r["mode"].lower(), r["topology"].lower()) == k):
                        v[s] = num(r, "cpu_s_per_mpkt")
            vals = " | ".join(fmt(v.get(s), 2) for s in servers)
            print(f"| {k[0]} | {k[1]} | {k[2]} | {vals} | {ratio(v.get('turnd'), v.get('coturn'))} |")

    # Setup cost and memory, from the runs with the most allocations.
    udp = [r for r in rows if not r.get("failed") and transport(r) == "udp"]
    most = max((int(r["allocations"]) for r in udp), default=0)
    big = [r for r in udp if int(r["allocations"]) == most]
    if big:
        print()
        print(f"Setup of {most:,} allocations (Allocate, then ChannelBind or CreatePermission, "
              "pipelined by the tool) and resident memory per allocation (the growth of the "
              "server's RSS over setup; read each server's first row: later runs reuse memory "
              "freed by earlier ones):")
        print()
        print("| server | mode | topology | ready | setup wall s | server CPU s for setup "
              "| RSS KiB per allocation |")
        print("|---|---|---|---:|---:|---:|---:|")
        for r in big:
            print(f"| {r['server']} | {r['mode'].lower()} | {r['topology'].lower()} | "
                  f"{r.get('ready')} | {fmt(num(r, 'setup_s'), 2)} | "
                  f"{fmt(num(r, 'setup_server_cpu_s'), 2)} | "
                  f"{fmt(num(r, 'rss_kib_per_alloc'), 1)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
