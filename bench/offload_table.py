#!/usr/bin/env python3
"""Turns the raw results of bench/offload.sh (lines "server=S phase=P k=v ...") into markdown
tables: every run with its CPU per relayed packet counted system-wide, then the summary with
the issue-19 ratios (turnd_offload against coturn 4.17.1, and against turnd without it)."""

import argparse
import statistics
import sys

ORDER = ("floor", "turnd", "turnd_offload", "coturn", "coturn417")


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


def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def per_packet(r):
    """CPU µs per relayed packet over the sending window: the whole machine; the machine less
    the load tool (a lower bound of what the relay costs: softirq work that runs on top of
    the tool, such as a veth's receive path and an XDP program on it, is charged to the tool);
    the machine less the tool's user time only (an upper bound: the kernel's work for the
    tool's own system calls stays in); the machine less the tool and less what it was busy
    with before the run (background); the server process alone."""
    relayed, busy = num(r, "relayed"), num(r, "system_busy_s")
    if not relayed or busy is None:
        return None
    tool = num(r, "tool_window_cpu_s") or 0.0
    tool_user = num(r, "tool_window_user_s")
    server = num(r, "server_window_cpu_s")
    soft = (num(r, "system_softirq_s") or 0.0) + (num(r, "system_irq_s") or 0.0)
    bg = (num(r, "bg_cores") or 0.0) * (num(r, "window_s") or 0.0)
    us = lambda s: None if s is None else s / relayed * 1e6
    return {
        "total": us(busy),
        "net": us(busy - tool),
        "server": us(server),
        "softirq": us(soft),
        "net_user": None if tool_user is None else us(busy - tool_user),
        "net_less_bg": us(max(busy - tool - bg, 0.0)),
    }


def drops(r):
    """Where packets were dropped during the run, as bench/offload.sh counts them: the veth
    pair, the server namespace's UDP receive buffers, the load namespace's, and the
    machine's backlog."""
    keys = ("veth_drops", "srv_udp_rcvbuf_errors", "load_udp_rcvbuf_errors", "backlog_drops")
    if not any(k in r for k in keys):
        return "-"
    return " / ".join(fmt(num(r, k), 0) for k in keys)


def ok(r):
    return not r.get("failed") and num(r, "relayed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target-rate", type=int, default=100000)
    ap.add_argument("results")
    args = ap.parse_args()
    header, rows = load(args.results)
    for h in header:
        print(f"> {h}  ")
    servers = [s for s in ORDER if any(r["server"] == s for r in rows)]

    print()
    print("| server | offered | sent pps | delivered pps | loss % | p50 µs | p99 µs "
          "| CPU µs/pkt, all cores | all cores − tool | all cores − tool user time "
          "| all cores − tool − background | server process | background cores "
          "| kernel program | dropped: veth / server UDP / load UDP / backlog |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        rate = r.get("rate", "?")
        offered = "flat out" if rate == "0" else f"{int(rate):,}" if rate.isdigit() else rate
        if not ok(r):
            print(f"| {r['server']} | {offered} | failed | | | | | | | | | | | | |")
            continue
        p = per_packet(r) or {}
        # A server that set up fewer allocations than asked carried the load on fewer flows.
        name = r["server"]
        if num(r, "ready") is not None and num(r, "ready") != num(r, "allocations"):
            name += f" ({fmt(num(r, 'ready'), 0)} of {fmt(num(r, 'allocations'), 0)} allocations)"
        print(f"| {name} | {offered} | {fmt(num(r, 'offered_pps'), 0)} | "
              f"{fmt(num(r, 'delivered_pps'), 0)} | {fmt(num(r, 'loss_pct'), 2)} | "
              f"{fmt(num(r, 'p50_us'))} | {fmt(num(r, 'p99_us'))} | "
              f"{fmt(p.get('total'), 2)} | {fmt(p.get('net'), 2)} | "
              f"{fmt(p.get('net_user'), 2)} | {fmt(p.get('net_less_bg'), 2)} | "
              f"{fmt(p.get('server'), 2)} | {fmt(num(r, 'bg_cores'), 2)} | "
              f"{r.get('attached', '-')} | {drops(r)} |")

    def median(vals):
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    net, net_user, total, p99, best = {}, {}, {}, {}, {}
    for s in servers:
        at = [r for r in rows if r["server"] == s and ok(r) and r.get("rate") == str(args.target_rate)]
        net[s] = median((per_packet(r) or {}).get("net") for r in at)
        total[s] = median((per_packet(r) or {}).get("total") for r in at)
        net_user[s] = median((per_packet(r) or {}).get("net_user") for r in at)
        p99[s] = median(num(r, "p99_us") for r in at)
        good = [num(r, "delivered_pps") for r in rows
                if r["server"] == s and ok(r) and (num(r, "loss_pct") or 0) < 1.0]
        best[s] = max((v for v in good if v is not None), default=None)

    print()
    print(f"Summary ({args.target_rate:,} pps offered where a rate applies, medians over the "
          "runs at that rate; highest delivered rate with under 1% loss over all runs):")
    print()
    print("| metric | " + " | ".join(servers) + " | turnd_offload/coturn417 | target "
          "| turnd_offload/turnd | turnd_offload/coturn | turnd/coturn |")
    print("|---|" + "---:|" * len(servers) + "---:|---|---:|---:|---:|")
    for name, d, digits, target in (
        ("CPU per relayed packet, all cores − tool (µs)", net, 2, "≤ 0.33"),
        ("CPU per relayed packet, all cores − tool user time (µs)", net_user, 2, ""),
        ("CPU per relayed packet, all cores (µs)", total, 2, ""),
        ("highest delivered rate with < 1% loss (pps)", best, 0, "≥ 3"),
        ("p99 round-trip latency (µs)", p99, 1, "p99 ≤ turnd's"),
    ):
        vals = " | ".join(fmt(d.get(s), digits) for s in servers)
        print(f"| {name} | {vals} | {ratio(d.get('turnd_offload'), d.get('coturn417'))} | "
              f"{target} | {ratio(d.get('turnd_offload'), d.get('turnd'))} | "
              f"{ratio(d.get('turnd_offload'), d.get('coturn'))} | "
              f"{ratio(d.get('turnd'), d.get('coturn'))} |")

    # CPU per relayed packet and loss at every offered rate: where the machine is not yet
    # saturated the per-packet cost is the relay's; past that it is the whole machine divided
    # by what got through.
    rates = []
    for r in rows:
        if ok(r) and r.get("rate") not in rates:
            rates.append(r.get("rate"))
    rates.sort(key=lambda x: int(x) if x.isdigit() and x != "0" else 1 << 60)
    for key, what in (("net", "all cores − tool"), ("total", "all cores")):
        print()
        print(f"By offered rate: CPU per relayed packet, {what} (µs; medians), and loss "
              "(%; medians):")
        print()
        print("| offered | " + " | ".join(servers) + " | turnd_offload/coturn417 "
              "| turnd_offload/turnd | turnd/coturn | turnd/coturn417 | loss % "
              + " / ".join(servers) + " |")
        print("|---:|" + "---:|" * len(servers) + "---:|---:|---:|---:|---|")
        for rate in rates:
            v, loss = {}, {}
            for s in servers:
                at = [r for r in rows if r["server"] == s and ok(r) and r.get("rate") == rate]
                v[s] = median((per_packet(r) or {}).get(key) for r in at)
                loss[s] = median(num(r, "loss_pct") for r in at)
            offered = "flat out" if rate == "0" else f"{int(rate):,}"
            vals = " | ".join(fmt(v.get(s), 2) for s in servers)
            losses = " / ".join(fmt(loss.get(s), 1) for s in servers)
            print(f"| {offered} | {vals} | {ratio(v.get('turnd_offload'), v.get('coturn417'))} | "
                  f"{ratio(v.get('turnd_offload'), v.get('turnd'))} | "
                  f"{ratio(v.get('turnd'), v.get('coturn'))} | "
                  f"{ratio(v.get('turnd'), v.get('coturn417'))} | {losses} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
