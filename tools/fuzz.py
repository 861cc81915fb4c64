#!/usr/bin/env python3
"""Runs every fuzz target under libFuzzer for DURATION seconds each and reports executions.

usage: fuzz.py LIBFUZZER_BIN CANARY_FUZZ_BIN DURATION [--merge] [TARGET...]

For each target (as `canary-fuzz list` names them): libFuzzer with the corpus kept in the
repo (fuzz/corpus/<target>/, read) and a working corpus (target/fuzz/corpus/<target>/, where
new inputs go), the target's dictionary, -max_total_time=DURATION and a 10 s hang limit.
Crashes land in target/fuzz/artifacts/<target>/, logs in target/fuzz/logs/. A table on stdout
and target/fuzz/report.json; exit status 1 if any target crashed or hung.
--merge: afterwards, fold the inputs that add coverage into fuzz/corpus/<target>/ (libFuzzer
-merge=1: only those, so the kept corpus stays small)."""
import json, os, pathlib, re, subprocess, sys, time

def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    merge = "--merge" in sys.argv
    if len(args) < 3:
        sys.exit(__doc__)
    libfuzzer, canary_fuzz, duration = args[0], args[1], int(args[2])
    chosen = set(args[3:])
    listed = subprocess.run([canary_fuzz, "list"], check=True, capture_output=True, text=True)
    targets = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    if chosen:
        targets = [t for t in targets if t["name"] in chosen]
    out = pathlib.Path("target/fuzz")
    rows = []
    for t in targets:
        name = t["name"]
        work, kept = out / "corpus" / name, pathlib.Path("fuzz/corpus") / name
        artifacts, logs, dicts = out / "artifacts" / name, out / "logs", out / "dict"
        for d in (work, artifacts, logs, dicts):
            d.mkdir(parents=True, exist_ok=True)
        dict_file = dicts / f"{name}.dict"
        dict_file.write_text(subprocess.run(
            [canary_fuzz, "dict", name], check=True, capture_output=True, text=True).stdout)
        crashes_before = set(artifacts.iterdir())
        log = logs / f"{name}.log"
        cmd = [libfuzzer, str(work), str(kept), f"-max_total_time={duration}",
               f"-max_len={t['max_len']}", "-timeout=10", "-rss_limit_mb=4096",
               f"-dict={dict_file}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
               "-print_pcs=0", "-close_fd_mask=1"]
        started = time.monotonic()
        with open(log, "w") as f:
            rc = subprocess.run(cmd, env={**os.environ, "CANARY_FUZZ_TARGET": name},
                                stdout=f, stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        stat = lambda key: int(m.group(1)) if (m := re.search(rf"stat::{key}:\s+(\d+)", text)) else None
        executions = stat("number_of_executed_units")
        if executions is None:  # a crash ends the run before the final stats
            runs = re.findall(r"#(\d+)\s", text)
            executions = int(runs[-1]) if runs else 0
        cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
        new = sorted(set(artifacts.iterdir()) - crashes_before)
        if merge and rc == 0:
            subprocess.run([libfuzzer, "-merge=1", f"-max_len={t['max_len']}", str(kept), str(work)],
                           env={**os.environ, "CANARY_FUZZ_TARGET": name},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        rows.append({
            "target": name, "executions": executions, "seconds": round(seconds, 1),
            "executions_per_s": round(executions / seconds) if seconds else 0,
            "coverage": int(cov[-1][0]) if cov else None, "features": int(cov[-1][1]) if cov else None,
            "corpus_kept": len(list(kept.iterdir())), "corpus_work": len(list(work.iterdir())),
            "peak_rss_mb": stat("peak_rss_mb"), "exit": rc,
            "artifacts": [str(p) for p in new], "log": str(log),
            "status": "ok" if rc == 0 and not new else "FAILED",
        })
        r = rows[-1]
        print(f"{name:<10} {r['executions']:>12,} execs {r['seconds']:>7.1f} s "
              f"{r['executions_per_s']:>9,}/s  cov {r['coverage']}  {r['status']}", flush=True)
    total = sum(r["executions"] for r in rows)
    report = {"duration_s_per_target": duration, "total_executions": total, "targets": rows}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'target':<10} {'executions':>13} {'execs/s':>9} {'cov':>6}  status")
    for r in rows:
        print(f"{r['target']:<10} {r['executions']:>13,} {r['executions_per_s']:>9,} "
              f"{r['coverage'] or 0:>6}  {r['status']}")
    print(f"{'total':<10} {total:>13,}\nreport: {out / 'report.json'}")
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"{r['target']}: exit {r['exit']}, see {r['log']}; reproduce with "
              f"`{canary_fuzz} run {r['target']} FILE` on {r['artifacts'] or 'the log'}", file=sys.stderr)
    sys.exit(1 if failed else 0)

main()
