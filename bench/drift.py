#!/usr/bin/env python3
"""mnemo drift vs river on the same JSON Lines stream, end to end (JSON parsing included).

Run through bench/drift.sh. The stream: N lines {"batch":i,"loss":x} with a mean shift
two thirds in. mnemo: `mnemo drift -d NAME --events-only FILE` pinned to one core, best of 3 (output:
the detections; process start included);
river: a Python loop json.loads → detector.update → collect detections, the code a river
user would write. Prints lines/s for each and the ratio.
"""
import argparse, json, os, random, subprocess, sys, time

def river_run(path, name):
    from river import drift
    det = {"page-hinkley": drift.PageHinkley, "adwin": drift.ADWIN}[name]()
    hits = []
    t = time.perf_counter()
    with open(path) as f:
        for i, line in enumerate(f):
            det.update(json.loads(line)["loss"])
            if det.drift_detected:
                hits.append(i)
    return time.perf_counter() - t, hits

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnemo", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lines", type=int, default=2_000_000)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"stream_{a.lines}.jsonl")
    if not os.path.exists(path):
        rnd = random.Random(0)
        with open(path, "w") as f:
            for i in range(a.lines):
                mu = 0.3 if i < 2 * a.lines // 3 else 0.6
                f.write(json.dumps({"batch": i, "loss": round(rnd.gauss(mu, 0.05), 6)}) + "\n")
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
    print(f"{a.lines} lines, {os.path.getsize(path) / 1e6:.0f} MB\n")
    print("| detector | mnemo lines/s | river lines/s | mnemo / river | same detections |")
    print("|---|---:|---:|---:|---|")
    for name in ["page-hinkley", "adwin"]:
        # Best of 3, pinned to one core (taskset -c 0): the goal is per core.
        ms = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            r = subprocess.run(["taskset", "-c", "0", a.mnemo, "drift", "-d", name, "--events-only", path],
                               capture_output=True, text=True)
            ms = min(ms, time.perf_counter() - t)
        ours = [json.loads(l)["index"] for l in r.stdout.splitlines()]
        rs, theirs = river_run(path, name)
        print(f"| {name} | {a.lines / ms:,.0f} | {a.lines / rs:,.0f} | **{rs / ms:.0f}x** | {ours == theirs} |")

if __name__ == "__main__":
    main()
