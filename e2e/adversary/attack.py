#!/usr/bin/python3
"""Hostile pods and hosts for weir's adversarial lab suite (e2e/tests/adversary.rs).

Run inside a lab pod or namespace (`weir-lab exec NS/POD -- /usr/bin/python3 attack.py ...`),
with Debian's python3-scapy. Every command prints one JSON object on stdout.

  listen   --port P --proto tcp|udp --seconds S [--ready FILE] [--socket]
           sniff what reaches this namespace's eth0 for the port (and any later fragment of
           the protocol): the "was anything delivered" witness (packets weir drops never get
           here); with --socket, the datagrams a UDP socket on the port receives.
  vxlan    --to NODE_IP --vni N --inner-src A --inner-dst B --dport P [--count N]
           hand-built VXLAN (UDP 4789) whose inner TCP SYN claims source A.
  spoof    --src A --dst B --dport P [--proto tcp|udp] [--count N] [--iface eth0 --dst-mac M]
           IPv4 with a forged source (at L3, or at L2 onto a given MAC).
  frag     --dst B --dport P [--sport S] [--size N] [--order normal|reverse|overlap] [--count N]
           one fragmented UDP datagram per count (ids vary), in the given fragment order;
           overlap: a first fragment naming --overlap-port, then one rewriting it to --dport.
  probe-loop --targets CIDR[,CIDR] --port P --seconds S [--exclude IP,...] [--timeout T]
           [--ready PATH]
           TCP connects to every address of the CIDRs, over and over, all in flight at once
           (each given T seconds, 50 ms unless told): which addresses ever accepted, and when
           (for one address, also each round's result in order). PATH is written once the
           first round is done, so a caller can change the cluster while the loop is running.
"""
import argparse
import asyncio
import ipaddress
import json
import os
import socket as socketlib
import sys
import time

from scapy.all import (IP, TCP, UDP, VXLAN, Ether, L3RawSocket, Raw, conf, fragment,  # noqa: E402
                       get_if_addr, get_if_hwaddr, send, sendp, sniff)

conf.verb = 0
# Layer-3 sends through a raw IP socket: the kernel routes and resolves neighbours (scapy's own
# ARP for the pod's gateway would wait seconds for an answer that never comes).
conf.L3socket = L3RawSocket


def out(obj):
    print(json.dumps(obj), flush=True)


def cmd_listen(a):
    def started():
        if a.ready:
            with open(a.ready, "w") as f:
                f.write("ready\n")

    if a.socket:
        # What reaches the application: the kernel only delivers reassembled datagrams.
        if a.proto != "udp":
            raise SystemExit("--socket listens on UDP")
        s = socketlib.socket(socketlib.AF_INET, socketlib.SOCK_DGRAM)
        s.bind(("0.0.0.0", a.port))
        started()
        end = time.monotonic() + a.seconds
        got = []
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                data, peer = s.recvfrom(65535)
                got.append({"src": peer[0], "len": len(data)})
            except socketlib.timeout:
                pass
        out({"count": len(got), "packets": got[:20]})
        return
    # What reaches the pod's interface: packets for this address with the port, and any later
    # fragment of the protocol (it carries no port, and could complete a datagram).
    me = get_if_addr("eth0")
    l4 = TCP if a.proto == "tcp" else UDP
    proto = 6 if a.proto == "tcp" else 17

    def delivered(p):
        if IP not in p or p[IP].dst != me or p[IP].proto != proto:
            return False
        return p[IP].frag > 0 or (l4 in p and p[l4].dport == a.port)

    seen = sniff(iface="eth0", lfilter=delivered, timeout=a.seconds, started_callback=started)
    pkts = [{"src": p[IP].src, "dst": p[IP].dst, "len": len(p), "frag": p[IP].frag} for p in seen]
    out({"count": len(pkts), "packets": pkts[:20]})


def cmd_vxlan(a):
    inner = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
             / IP(src=a.inner_src, dst=a.inner_dst)
             / TCP(sport=40000, dport=a.dport, flags="S"))
    for i in range(a.count):
        # Plain VXLAN (RFC 7348): scapy would otherwise mark an Ethernet payload as VXLAN-GPE.
        send(IP(dst=a.to) / UDP(sport=50000 + i, dport=4789) / VXLAN(flags=0x08, NextProtocol=0, vni=a.vni) / inner)
    out({"sent": a.count})


def cmd_spoof(a):
    l4 = TCP(sport=40000, dport=a.dport, flags="S") if a.proto == "tcp" else UDP(sport=40000, dport=a.dport)
    pkt = IP(src=a.src, dst=a.dst) / l4 / Raw(b"spoofed")
    for _ in range(a.count):
        if a.dst_mac:
            # A real source MAC: a bridge drops frames from an all-zero one.
            sendp(Ether(src=get_if_hwaddr(a.iface), dst=a.dst_mac) / pkt, iface=a.iface)
        else:
            send(pkt)
    out({"sent": a.count})


def cmd_frag(a):
    sent = 0
    for i in range(a.count):
        dgram = IP(dst=a.dst, id=(os.getpid() * 7 + i) & 0xFFFF) / UDP(sport=a.sport, dport=a.dport) / Raw(b"F" * a.size)
        frags = fragment(dgram, fragsize=512)
        if a.order == "reverse":
            frags = list(reversed(frags))
        elif a.order == "overlap":
            # The first fragment names --overlap-port (one policy allows); a second first
            # fragment of the same datagram then rewrites the UDP header to name --dport.
            first = IP(bytes(frags[0]))
            first[UDP].dport = a.overlap_port
            del first[UDP].chksum
            del first.chksum
            frags = [first] + frags
        for f in frags:
            send(f)
            sent += 1
    out({"sent": sent})


async def try_connect(ip, port, timeout):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
        w.close()
        return True
    except Exception:
        return False


async def probe_loop(a):
    ips = []
    exclude = set(a.exclude.split(",")) if a.exclude else set()
    for c in a.targets.split(","):
        ips += [str(h) for h in ipaddress.ip_network(c).hosts() if str(h) not in exclude]
    start = time.monotonic()
    hits, rounds, timeline = {}, 0, []
    while time.monotonic() - start < a.seconds:
        results = await asyncio.gather(*(try_connect(ip, a.port, a.timeout) for ip in ips))
        now = round(time.monotonic() - start, 3)
        for ip, ok in zip(ips, results):
            if ok:
                hits.setdefault(ip, []).append(now)
        if len(ips) == 1:
            timeline.append(results[0])
        rounds += 1
        if rounds == 1 and a.ready:
            with open(a.ready, "w") as f:
                f.write("running\n")
    out({"rounds": rounds, "addresses": len(ips), "accepted": hits, "timeline": timeline})


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("listen")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    s.add_argument("--seconds", type=float, default=3)
    s.add_argument("--ready")
    s.add_argument("--socket", action="store_true")
    s = sub.add_parser("vxlan")
    s.add_argument("--to", required=True)
    s.add_argument("--vni", type=int, default=2)
    s.add_argument("--inner-src", required=True)
    s.add_argument("--inner-dst", required=True)
    s.add_argument("--dport", type=int, default=8080)
    s.add_argument("--count", type=int, default=5)
    s = sub.add_parser("spoof")
    s.add_argument("--src", required=True)
    s.add_argument("--dst", required=True)
    s.add_argument("--dport", type=int, default=8080)
    s.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    s.add_argument("--count", type=int, default=5)
    s.add_argument("--iface", default="eth0")
    s.add_argument("--dst-mac")
    s = sub.add_parser("frag")
    s.add_argument("--dst", required=True)
    s.add_argument("--dport", type=int, required=True)
    s.add_argument("--sport", type=int, default=7000)
    s.add_argument("--size", type=int, default=1400)
    s.add_argument("--order", choices=["normal", "reverse", "overlap"], default="normal")
    s.add_argument("--overlap-port", type=int, default=5353)
    s.add_argument("--count", type=int, default=3)
    s = sub.add_parser("probe-loop")
    s.add_argument("--targets", required=True)
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--seconds", type=float, default=5)
    s.add_argument("--exclude", default="")
    s.add_argument("--timeout", type=float, default=0.05)
    s.add_argument("--ready")
    a = p.parse_args()
    if a.cmd == "probe-loop":
        asyncio.run(probe_loop(a))
    else:
        {"listen": cmd_listen, "vxlan": cmd_vxlan, "spoof": cmd_spoof, "frag": cmd_frag}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
