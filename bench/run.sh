#!/usr/bin/env bash
# `make bench`: runs agentd's benchmark program (build/bin/agentd_bench), then, one after the
# other (never at the same time), the peer runtimes of ../shared/peers (raw disk limits, Restate,
# DBOS, LangGraph, Durable Task), and writes bench/work/<UTC timestamp>/ with agentd.jsonl,
# peers/ (the peers' results folder) and summary.md (printed at the end). See bench/README.md.
#
# Environment knobs:
#   BENCH_RUNS=3        repetitions (agentd_bench --runs, and RUNS of the peers' run_all.sh)
#   BENCH_PEER_N=1000   steps per peer session (run_all.sh N; the 8-session shape runs N/4 each)
#   BENCH_ONLY=         passed as agentd_bench --only (seq|conc|latency|resume|history|idle);
#                       "sandbox" runs only sandbox_bench; "identity" only policy_bench and
#                       identity_bench (policy decisions, tokens, the gate per request);
#                       "audit" only audit_bench (audit append cost, verify speed)
#   BENCH_ARGS=         extra agentd_bench arguments, e.g. "--idle-sessions 20000"
#   BENCH_PEERS=1       0 skips the peers
#   PEERS_DIR=../shared/peers (relative to the repo root)
#   PEERS, CONCS, RAW   passed to run_all.sh (runtimes to run, concurrency shapes, raw suite on/off)
#
# Exit status: agentd_bench's (a peer that fails or is skipped is reported, not fatal); with
# BENCH_ONLY=identity, non-zero when policy_bench or identity_bench failed; with BENCH_ONLY=audit,
# audit_bench's.
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${BENCH_RUNS:-3}
PEER_N=${BENCH_PEER_N:-1000}
ONLY=${BENCH_ONLY:-}
EXTRA_ARGS=${BENCH_ARGS:-}
WANT_PEERS=${BENCH_PEERS:-1}
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
BIN=$ROOT/build/bin/agentd_bench
WORK=$ROOT/bench/work
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$WORK/$STAMP
NOTES=$OUT/notes.txt   # one line per skipped or failed part; ends up in summary.md

die() { echo "bench/run.sh: $*" >&2; exit 2; }
log() { echo "[bench] $*" >&2; }
note() { log "$*"; echo "$*" >> "$NOTES"; }
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# port_holder PORT: " (process NAME, pid N)" when ss can tell who listens on 127.0.0.1:PORT.
port_holder() {
  command -v ss >/dev/null || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -nE 's/.*users:\(\("([^"]+)",pid=([0-9]+).*/ (process \1, pid \2)/p' | head -1
}

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer (got '$RUNS')"
[[ $PEER_N =~ ^[1-9][0-9]*$ ]] || die "BENCH_PEER_N must be a positive integer (got '$PEER_N')"
case "$ONLY" in ""|seq|conc|latency|resume|history|idle|sandbox|identity|audit) ;;
  *) die "BENCH_ONLY must be one of seq conc latency resume history idle sandbox identity audit (got '$ONLY')" ;; esac
# BENCH_ONLY=sandbox, identity or audit: those benchmarks alone, without agentd_bench or the peers.
case "$ONLY" in sandbox|identity|audit) WANT_PEERS=0 ;; esac
case "$ONLY" in sandbox|identity|audit) ;;
  *) [ -x "$BIN" ] || die "$BIN not found: run 'make build' (or 'make bench')" ;; esac
command -v python3 >/dev/null || die "python3 is needed to write the summary"

# One bench at a time: two would skew each other's figures and fight over the peers' ports.
mkdir -p "$WORK"
LOCK=$WORK/.run.lock
if ! mkdir "$LOCK" 2>/dev/null; then
  other=$(cat "$LOCK/pid" 2>/dev/null || true)
  if [ -n "$other" ] && kill -0 "$other" 2>/dev/null; then
    die "another bench/run.sh (pid $other) is running; wait for it (lock: $LOCK)"
  fi
  rm -rf "$LOCK"; mkdir "$LOCK" || die "cannot take the lock $LOCK"
fi
echo $$ > "$LOCK/pid"

PEERS_SRC=$WORK/peers/src     # private copy of the peers folder (its npm installs land here)
PW=$WORK/peers/work           # PEERS_WORK: npm cache, compiled helpers, server data, raw results
PG_STARTED=0
cleanup() {
  if [ "$PG_STARTED" = 1 ]; then
    log "stopping the peers' PostgreSQL cluster"
    PEERS_WORK=$PW "$PEERS_SRC/dbos/pg.sh" stop >/dev/null 2>&1 || true
  fi
  rm -rf "$LOCK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT"; : > "$NOTES"
log "results -> $OUT"
{ echo "date_utc: $STAMP"; echo "uname: $(uname -srmo)"; echo "cpus: $(nproc)"
  echo "results_fs: $(df -PT "$OUT" | awk 'NR==2 {print $2 " on " $1}')"
  echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] && echo ' (uncommitted changes)')"
} > "$OUT/env.txt"

# ---------------------------------------------------------------------------------------------
# 1. agentd. Its temp dir (data, logs, the SQLite baseline file) is put under the results folder
#    so that agentd and its SQLite baseline use the same disk as the peers (a tmpfs /tmp would
#    make fsync free). agentd_bench deletes it when it finishes normally.
AGENTD_RC=0
if [ "$ONLY" != sandbox ] && [ "$ONLY" != identity ] && [ "$ONLY" != audit ]; then
ARGS=(--runs "$RUNS")
[ -n "$ONLY" ] && ARGS+=(--only "$ONLY")
read -r -a extra <<< "$EXTRA_ARGS"; ARGS+=("${extra[@]}")
mkdir -p "$OUT/tmp"
echo "agentd_bench ${ARGS[*]}" > "$OUT/agentd.cmd"
log "agentd: $BIN ${ARGS[*]}"
TMPDIR=$OUT/tmp "$BIN" "${ARGS[@]}" 2> "$OUT/agentd.stderr.log" | tee "$OUT/agentd.jsonl"
AGENTD_RC=${PIPESTATUS[0]}
rmdir "$OUT/tmp" 2>/dev/null || true
if [ "$AGENTD_RC" != 0 ]; then
  note "agentd_bench FAILED with exit status $AGENTD_RC (stderr: agentd.stderr.log; its temp dir, if left, under tmp/)"
  tail -20 "$OUT/agentd.stderr.log" >&2
fi
fi

# 1b. Sandboxes (sandbox_bench): cold start and warm exec beside bare bwrap, idle memory,
#     workspace snapshot/restore. Skipped with BENCH_ONLY set to one of agentd_bench's parts.
SANDBOX_RC=0
if [ -z "$ONLY" ] || [ "$ONLY" = sandbox ]; then
  log "sandbox: $ROOT/build/bin/sandbox_bench --dir $OUT"
  "$ROOT/build/bin/sandbox_bench" --dir "$OUT" 2> "$OUT/sandbox.stderr.log" | tee "$OUT/sandbox.jsonl"
  SANDBOX_RC=${PIPESTATUS[0]}
  [ "$SANDBOX_RC" != 0 ] && note "sandbox_bench FAILED with exit status $SANDBOX_RC (stderr: sandbox.stderr.log)"
fi

# 1c. Identity: policy decisions (policy_bench) and tokens (identity_bench), Google Benchmark
#     programs; BENCH_RUNS repetitions each, their JSON (with median rows) in policy.json and
#     identity.json. Skipped with BENCH_ONLY set to one of agentd_bench's parts or "sandbox".
IDENTITY_RC=0
if [ -z "$ONLY" ] || [ "$ONLY" = identity ]; then
  for b in policy identity; do
    exe=$ROOT/build/bin/${b}_bench
    if [ ! -x "$exe" ]; then
      note "${b}_bench not found ($exe): run 'make build'"; IDENTITY_RC=2; continue
    fi
    log "$b: $exe"
    "$exe" --benchmark_repetitions="$RUNS" --benchmark_out="$OUT/$b.json" \
      --benchmark_out_format=json 2> "$OUT/$b.stderr.log" | grep -v -E '_(mean|stddev|cv) '
    rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ]; then
      note "${b}_bench FAILED with exit status $rc (stderr: $b.stderr.log)"; IDENTITY_RC=$rc
    fi
  done
fi
# 1d. Audit log (audit_bench): event-batch commit throughput without and with one audit entry
#     per batch, and verify speed over a chain of a million entries, in audit.jsonl. Its
#     databases go under the results folder, on the disk the other figures use.
AUDIT_RC=0
if [ -z "$ONLY" ] || [ "$ONLY" = audit ]; then
  log "audit: $ROOT/build/bin/audit_bench --dir $OUT --runs $RUNS"
  "$ROOT/build/bin/audit_bench" --dir "$OUT" --runs "$RUNS" 2> "$OUT/audit.stderr.log" |
    tee "$OUT/audit.jsonl"
  AUDIT_RC=${PIPESTATUS[0]}
  [ "$AUDIT_RC" != 0 ] && note "audit_bench FAILED with exit status $AUDIT_RC (stderr: audit.stderr.log)"
fi
EXIT_RC=$AGENTD_RC
[ "$ONLY" = identity ] && EXIT_RC=$IDENTITY_RC
[ "$ONLY" = audit ] && EXIT_RC=$AUDIT_RC

# ---------------------------------------------------------------------------------------------
# 2. Peers, after agentd_bench has exited.
PEERS_RAN=0
PEERS_CMD=""

# Builds the raw C helpers and runs the raw benchmarks that need no PostgreSQL (what raw/suite.sh
# runs, minus pgbench and pg_test_fsync), into $1.
raw_without_pg() {
  local res=$1 bin=$PW/bin w=$PW/raw m s
  mkdir -p "$bin" "$w" "$res"
  gcc -O2 -o "$bin/fsync_bench" "$PEERS_SRC/raw/fsync_bench.c" &&
    gcc -O2 -o "$bin/sqlite_bench" "$PEERS_SRC/raw/sqlite_bench.c" -lsqlite3 ||
    { note "raw: cannot build the C helpers (gcc, libsqlite3-dev?)"; return 1; }
  log "raw (without PostgreSQL): fsync, SQLite C, SQLite Python"
  for m in append-fdatasync overwrite-fdatasync append-fsync; do
    for _ in $(seq "$RUNS"); do "$bin/fsync_bench" "$m" 2000 "$w/fsync.dat"; done
  done > "$res/raw_fsync.jsonl"
  for s in FULL NORMAL; do
    for _ in $(seq "$RUNS"); do "$bin/sqlite_bench" "$s" 2000 1 512 "$w/journal.sqlite"; done
  done > "$res/sqlite_c.jsonl"
  for _ in $(seq "$RUNS"); do "$bin/sqlite_bench" FULL 500 16 512 "$w/journal.sqlite"; done > "$res/sqlite_c_batch.jsonl"
  for s in FULL NORMAL; do
    for _ in $(seq "$RUNS"); do python3 "$PEERS_SRC/raw/sqlite_bench.py" "$s" 2000 512 "$w/journal-py.sqlite"; done
  done > "$res/sqlite_py.jsonl"
}

run_peers() {
  if [ "$WANT_PEERS" = 0 ]; then
    note "peers not run: BENCH_PEERS=0"; return
  fi
  if [ ! -x "$PEERS_DIR/run_all.sh" ]; then
    note "peers not run: no peers folder at $PEERS_DIR (set PEERS_DIR to its location); agentd's figures only"
    return
  fi
  PEERS_DIR=$(cd "$PEERS_DIR" && pwd)

  # Work on a private copy so that nothing is written into the peers folder (npm installs go into
  # each runtime folder): refresh its sources, keep its node_modules from earlier runs.
  mkdir -p "$PEERS_SRC" "$PW"
  find "$PEERS_SRC" -mindepth 1 -name node_modules -prune -o \( -type f -o -type l \) -print0 | xargs -0 -r rm -f
  if ! (cd "$PEERS_DIR" && tar --exclude=node_modules --exclude=./work --exclude=./results \
          --exclude=package-lock.json -cf - .) | (cd "$PEERS_SRC" && tar --no-same-owner -xf -); then
    note "peers not run: cannot copy $PEERS_DIR to $PEERS_SRC"; return
  fi
  find "$PEERS_SRC" -name node_modules -prune -o -exec chmod u+w {} +
  export PEERS_WORK=$PW

  local raw=${RAW:-1} concs=${CONCS:-1 8} list=() keep=() p port taken
  read -r -a list <<< "${PEERS:-}"
  if [ ${#list[@]} = 0 ]; then
    for f in "$PEERS_SRC"/*/run.sh; do [ -x "$f" ] && list+=("$(basename "$(dirname "$f")")"); done
  fi

  # Restate binds fixed loopback ports; `make run` puts agentd on 8080.
  for p in "${list[@]}"; do
    if [ "$p" = restate ]; then
      taken=()
      for port in 8080 9070 5122 9080; do port_taken "$port" && taken+=("$port$(port_holder "$port")"); done
      if [ ${#taken[@]} -gt 0 ]; then
        note "restate SKIPPED: Restate needs 127.0.0.1:8080, :9070, :5122 and :9080, but ${taken[*]} in use (a 'make run' agentd on 8080? stop it and rerun)"
        continue
      fi
    fi
    keep+=("$p")
  done
  # Restate first: the shortest time between the port check above and its use.
  list=()
  for p in "${keep[@]+"${keep[@]}"}"; do [ "$p" = restate ] && list+=("$p"); done
  for p in "${keep[@]+"${keep[@]}"}"; do [ "$p" != restate ] && list+=("$p"); done

  # PostgreSQL (raw suite, DBOS): start it here so that a failure only drops what needs it.
  # run_all.sh then finds it running and leaves it to us to stop.
  local need_pg=0 raw_fallback=0
  [ "$raw" = 1 ] && need_pg=1
  [[ " ${list[*]-} " == *" dbos "* ]] && need_pg=1
  if [ "$need_pg" = 1 ]; then
    if "$PEERS_SRC/dbos/pg.sh" status >/dev/null 2>&1; then
      log "the peers' PostgreSQL cluster is already running; leaving it running"
    elif "$PEERS_SRC/dbos/pg.sh" start > "$OUT/peers-pg.log" 2>&1; then
      PG_STARTED=1
    else
      local what=()
      [[ " ${list[*]-} " == *" dbos "* ]] && what+=("dbos FAILED")
      [ "$raw" = 1 ] && what+=("raw PostgreSQL figures (pg_commit, pg_test_fsync) FAILED")
      local joined; joined=$(printf '%s; ' "${what[@]}"); joined=${joined%; }
      note "PostgreSQL could not be started (see peers-pg.log): $joined"
      tail -5 "$OUT/peers-pg.log" >&2
      keep=(); for p in "${list[@]-}"; do [ -n "$p" ] && [ "$p" != dbos ] && keep+=("$p"); done
      list=("${keep[@]+"${keep[@]}"}")
      if [ "$raw" = 1 ]; then raw=0; raw_fallback=1; fi
    fi
  fi

  mkdir -p "$OUT/peers"
  if [ ${#list[@]} -gt 0 ]; then
    PEERS_CMD="PEERS=\"${list[*]}\" CONCS=\"$concs\" RAW=$raw run_all.sh $RUNS $PEER_N"
    log "peers: $PEERS_CMD (from $PEERS_SRC)"
    (cd "$PEERS_SRC" && PEERS="${list[*]}" CONCS="$concs" RAW=$raw ./run_all.sh "$RUNS" "$PEER_N") 2>&1 |
      tee "$OUT/peers.log"
    local prc=${PIPESTATUS[0]} res
    res=$(sed -n 's/^results -> //p' "$OUT/peers.log" | tail -1)
    if [ -n "$res" ] && [ -d "$res" ]; then
      cp -r "$res/." "$OUT/peers/"
      echo "$res" > "$OUT/peers/source.txt"
      PEERS_RAN=1
    else
      note "peers: run_all.sh wrote no results folder (exit status $prc; see peers.log)"
    fi
    [ "$prc" != 0 ] && log "run_all.sh exited with status $prc (failures are listed in the summary)"
    # A port can be taken after the check above (run_all.sh runs Restate minutes later).
    if grep -q '^\[peers\] 127.0.0.1:[0-9]* is already in use' "$OUT/peers.log"; then
      note "restate FAILED: $(grep -o '^\[peers\] 127.0.0.1:[0-9]* is already in use' "$OUT/peers.log" | head -1 | cut -c9-) when Restate was started$(port_holder 8080) (a 'make run' agentd on 8080? stop it and rerun)"
    fi
  elif [ "$raw" = 1 ]; then
    PEERS_CMD="raw/suite.sh RESULTS $RUNS (no runtime left to run)"
    log "peers: $PEERS_CMD"
    "$PEERS_SRC/raw/suite.sh" "$OUT/peers" "$RUNS" 2>&1 | tee "$OUT/peers.log" ||
      echo "FAILED: raw" >> "$OUT/peers/failed.txt"
    PEERS_RAN=1
  fi
  if [ "$raw_fallback" = 1 ]; then
    PEERS_CMD="${PEERS_CMD:+$PEERS_CMD; }raw benchmarks without PostgreSQL"
    raw_without_pg "$OUT/peers" 2>&1 | tee -a "$OUT/peers.log" && PEERS_RAN=1
  fi
  if [ "$PEERS_RAN" = 1 ]; then
    # (Re)write the peers' own median table over everything in the folder, keeping FAILED lines.
    if { python3 "$PEERS_SRC/summarize.py" "$OUT/peers"
         grep -h '^FAILED' "$OUT/peers/summary.md" "$OUT/peers/failed.txt" 2>/dev/null || true
       } > "$OUT/peers/summary.md.new"; then
      mv "$OUT/peers/summary.md.new" "$OUT/peers/summary.md"
    else
      rm -f "$OUT/peers/summary.md.new"
    fi
  else
    [ ${#list[@]} = 0 ] && note "peers: nothing left to run"
    rmdir "$OUT/peers" 2>/dev/null
  fi
}
run_peers

# ---------------------------------------------------------------------------------------------
# 3. summary.md
BENCH_STAMP=$STAMP BENCH_RUNS=$RUNS BENCH_PEER_N=$PEER_N BENCH_PEERS_CMD=$PEERS_CMD \
BENCH_PEERS_DIR=$PEERS_DIR BENCH_AGENTD_RC=$AGENTD_RC \
python3 - "$OUT" > "$OUT/summary.md" <<'PY'
import glob, json, os, re, statistics, sys

out = sys.argv[1]
E = os.environ
peer_n = int(E["BENCH_PEER_N"])


def read_jsonl(path):
    """Per-run JSON rows of a file (lines starting with '{'; summary lines with median_* keys skipped)."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not any(k.startswith("median_") for k in row):
                    rows.append(row)
    except OSError:
        pass
    return rows


def num(x, unit=""):
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    s = "%.0f" % x if abs(x) >= 100 else ("%.3g" % x)
    return s + unit


def med(rows, key):
    xs = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(xs) if xs else None


env = {}
try:
    for line in open(os.path.join(out, "env.txt")):
        k, _, v = line.partition(": ")
        env[k] = v.strip()
except OSError:
    pass
notes = [l.strip() for l in open(os.path.join(out, "notes.txt")) if l.strip()]
try:
    cmd = open(os.path.join(out, "agentd.cmd")).read().strip()
except OSError:
    cmd = "agentd_bench"

P = print
P("# Benchmarks %s\n" % E["BENCH_STAMP"])
P("- machine: %s, %s CPUs; results on %s" % (env.get("uname", "?"), env.get("cpus", "?"), env.get("results_fs", "?")))
P("- agentd: git %s; `%s`" % (env.get("git", "?"), cmd))
if E.get("BENCH_PEERS_CMD"):
    P("- peers: `%s` (copy of %s)" % (E["BENCH_PEERS_CMD"], E["BENCH_PEERS_DIR"]))
else:
    P("- peers: not run (see Notes)")
P("- a step: agentd = one model call over loopback HTTP to the fake model + one http tool call to the "
  "loopback fake tool server, both journaled (SQLite, synchronous=FULL); peers = one durable step whose body "
  "does nothing (no network call besides the runtime's own)")
P()

# ---- agentd
A = {}
for r in read_jsonl(os.path.join(out, "agentd.jsonl")):
    A[r.get("bench", "?")] = r
P("## agentd\n")
if E["BENCH_AGENTD_RC"] != "0":
    P("**agentd_bench failed (exit status %s); figures below are those it printed before.**\n" % E["BENCH_AGENTD_RC"])
rows = []
warn = []


def runs_of(r):
    rs = r.get("runs")
    return " (runs: %s)" % ", ".join(num(x) for x in rs) if isinstance(rs, list) and len(rs) > 1 else ""


for name, r in A.items():
    if name == "sqlite_full_commit":
        rows.append((name, "SQLite synchronous=FULL commits/s, one 512-byte row per txn (agentd_bench's baseline)", num(r.get("commits_per_s"))))
    elif name == "step_floor":
        rows.append((name, "floor of a step without agentd: 2 commits (%s µs each) + model round trip (%s B request) + tool round trip"
                     % (num(r.get("commit_us")), r.get("model_request_bytes", "?")),
                     "%s + %s + %s = %s" % (num(2 * r["commit_us"] if r.get("commit_us") is not None else None, " µs"),
                                            num(r.get("model_round_trip_us"), " µs"), num(r.get("tool_round_trip_us"), " µs"),
                                            num(r.get("floor_step_us"), " µs"))))
        rows.append((name, "floor steps/s, and as a fraction of the SQLite FULL commit rate",
                     "%s (%s)" % (num(r.get("floor_steps_per_s")), num(r.get("floor_fraction_of_sqlite_full_commit_rate")))))
    elif name == "single_session":
        rows.append((name, "steps/s, 1 session, turns of 10 steps" + runs_of(r), num(r.get("steps_per_s"))))
        rows.append((name, "fraction of the SQLite FULL commit rate", num(r.get("fraction_of_sqlite_full_commit_rate"))))
        rows.append((name, "agentd CPU per step (user+sys)", num(r.get("agentd_cpu_us_per_step"), " µs")))
        rows.append((name, "CPU per step of the two fakes and the client", num(r.get("fakes_and_client_cpu_us_per_step"), " µs")))
    elif name == "concurrent_64":
        rows.append((name, "steps/s aggregate, 64 sessions, turns of 10 steps" + runs_of(r), num(r.get("steps_per_s"))))
        rows.append((name, "agentd CPU per step (user+sys)", num(r.get("agentd_cpu_us_per_step"), " µs")))
        rows.append((name, "CPU per step of the two fakes and the client", num(r.get("fakes_and_client_cpu_us_per_step"), " µs")))
    elif name == "step_latency":
        p50, p99 = r.get("step_p50_us"), r.get("step_p99_us")
        rows.append((name, "per-step latency p50 / p99 (SSE, 10-step turns on fresh sessions, %s samples)" % r.get("samples", "?"),
                     "%s / %s" % (num(p50 / 1e3 if p50 is not None else None, " ms"), num(p99 / 1e3 if p99 is not None else None, " ms"))))
    elif name == "resume_after_kill9":
        rows.append((name, "ready after kill -9 + restart, %s sessions (%s had work to resume)"
                     % (r.get("sessions", "?"), r.get("sessions_resumed", "?")), num(r.get("ready_s"), " s")))
        rows.append((name, "all interrupted 20-step turns finished (%s completed)" % r.get("turns_completed", "?"),
                     num(r.get("all_turns_finished_s"), " s")))
        if r.get("turns_completed") != r.get("sessions"):
            warn.append("resume_after_kill9: not every interrupted turn completed.")
    elif name == "first_turn_after_restart":
        ev = r.get("long_session_events", "?")
        rows.append((name, "after restart, submit → model_call.started: fresh / %s events" % ev,
                     "%s / %s" % (num(r.get("small_to_model_call_ms"), " ms"), num(r.get("long_to_model_call_ms"), " ms"))))
        rows.append((name, "after restart, whole `say hi` turn: fresh / %s events" % ev,
                     "%s / %s" % (num(r.get("small_turn_ms"), " ms"), num(r.get("long_turn_ms"), " ms"))))
        rev = r.get("retried_session_events", "?")
        rows.append((name, "the same, %s events of retried model calls (short conversation): to model_call.started / whole turn" % rev,
                     "%s / %s" % (num(r.get("retried_to_model_call_ms"), " ms"), num(r.get("retried_turn_ms"), " ms"))))
    elif name == "idle_sessions":
        n, b, a = r.get("sessions"), r.get("rss_mib_before"), r.get("rss_mib_after")
        rows.append((name, "RSS before / after creating %s sessions" % n, "%s / %s" % (num(b, " MiB"), num(a, " MiB"))))
        if n and a is not None and b is not None:
            rows.append((name, "RSS growth per session", num((a - b) * 1024 * 1024 / n, " B")))
        rows.append((name, "sessions resident in memory afterwards", num(r.get("resident_sessions"))))
        rows.append((name, "sessions created/s (64 clients)", num(r.get("sessions_created_per_s"))))
    else:
        for k, v in r.items():
            if k != "bench":
                rows.append((name, k, num(v)))
if rows:
    P("| benchmark | figure | value |\n|---|---|---|")
    for r in rows:
        P("| %s | %s | %s |" % r)
else:
    P("(no figures)")
P()

# ---- peers
pdir = os.path.join(out, "peers")
RAW_FILES = ["raw_fsync", "sqlite_c", "sqlite_c_batch", "sqlite_py", "pg_commit"]
DURABLE = {"restate": "yes", "dbos": "yes (PostgreSQL)", "langgraph": "", "durabletask": "no (in-memory backend)"}
files = {os.path.basename(p)[:-len(".jsonl")]: read_jsonl(p) for p in sorted(glob.glob(os.path.join(pdir, "*.jsonl")))}
failed = []
for fn in ("summary.md", "failed.txt"):
    try:
        failed += [l.strip() for l in open(os.path.join(pdir, fn)) if l.startswith("FAILED")]
    except OSError:
        pass
failed = list(dict.fromkeys(failed))


def variant(r):
    return str(r.get("variant", ""))


def shape(rows, n, conc):
    """Rows of one shape (N, CONC); if no row has N == n, the rows with the largest N."""
    rs = [r for r in rows if r.get("CONC", 1) == conc]
    hit = [r for r in rs if r.get("N") == n]
    if not hit and rs:
        top = max(r.get("N", 0) for r in rs)
        hit = [r for r in rs if r.get("N", 0) == top]
    return hit


peer_rows = []  # (runtime, variant, durable, {conc: (N, steps/s, p50, p99, runs)})
runtimes = sorted({re.sub(r"_conc\d+$", "", f) for f in files} - set(RAW_FILES))
concs = sorted({int(m.group(1)) for f in files for m in [re.search(r"_conc(\d+)$", f)] if m})
for rt in runtimes:
    per = {}
    for c in [1] + concs:
        rows_c = files.get(rt if c == 1 else "%s_conc%d" % (rt, c), [])
        want_n = peer_n if c == 1 else peer_n // 4
        for r in shape(rows_c, want_n, c):
            per.setdefault(variant(r), {}).setdefault(c, []).append(r)
    for v, by_c in per.items():
        dur = DURABLE.get(rt, "")
        if rt == "langgraph":
            dur = "yes" if "FULL" in v else "not on power loss (synchronous=NORMAL)"
        peer_rows.append((rt, v, dur, by_c))

P("## Peers\n")
if not files:
    P("(not run, or no results; see Notes)\n")
else:
    cc = [c for c in concs]
    hdr = "| runtime | variant | durable | steps/s 1 session (N=%d) | p50 / p99 ms |" % peer_n
    sep = "|---|---|---|---|---|"
    for c in cc:
        hdr += " steps/s %d sessions (%d x %d) | p50 / p99 ms |" % (c, c, peer_n // 4)
        sep += "---|---|"
    P(hdr + "\n" + sep)
    for rt, v, dur, by_c in peer_rows:
        cells = [rt, v or "-", dur]
        for c in [1] + cc:
            rs = by_c.get(c, [])
            if rs:
                cells += [num(med(rs, "steps_per_s")),
                          "%s / %s" % (num(med(rs, "step_p50_ms")), num(med(rs, "step_p99_ms")))]
            else:
                cells += ["n/a", "n/a"]
        P("| " + " | ".join(cells) + " |")
    P("\nMedians over %s run(s). Steps/s = N x sessions / wall time; p50/p99 = per-step latency inside the runtime." % E["BENCH_RUNS"])
    P()
    raw_rows = []
    for r_name, key_fields, metrics in [
        ("raw_fsync", ["mode"], [("ops_per_s", "ops/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs")]),
        ("sqlite_c", ["synchronous"], [("commits_per_s", "commits/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs")]),
        ("sqlite_c_batch", ["synchronous", "rows_per_txn"], [("commits_per_s", "commits/s"), ("rows_per_s", "rows/s")]),
        ("sqlite_py", ["synchronous"], [("commits_per_s", "commits/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs")]),
        ("pg_commit", ["synchronous_commit"], [("tps", "commits/s"), ("latency_avg_ms", "avg ms")])]:
        groups = {}
        for r in files.get(r_name, []):
            groups.setdefault(" ".join("%s=%s" % (k, r.get(k)) for k in key_fields), []).append(r)
        for g, rs in groups.items():
            raw_rows.append((r_name, g, "; ".join("%s %s" % (label, num(med(rs, m))) for m, label in metrics if med(rs, m) is not None)))
    if raw_rows:
        P("Raw limits of this machine (peers' raw/ suite):\n")
        P("| benchmark | variant | medians |\n|---|---|---|")
        for r in raw_rows:
            P("| %s | %s | %s |" % r)
        P()
if failed:
    P("Peer failures reported by the peers' scripts:\n")
    for f in failed:
        P("- %s" % f)
    P()

# ---- ratios
P("## Ratios\n")


def ratio(a, b):
    return "%.3g" % (a / b) if a is not None and b else "n/a"


ag1 = A.get("single_session", {}).get("steps_per_s")
ag64 = A.get("concurrent_64", {}).get("steps_per_s")
ag_sql = A.get("sqlite_full_commit", {}).get("commits_per_s")
rs1 = med(shape(files.get("restate", []), peer_n, 1), "steps_per_s")
rs8 = med(shape(files.get("restate_conc8", []), peer_n // 4, 8), "steps_per_s")
sq = [r for r in files.get("sqlite_c", []) if r.get("synchronous") == "FULL" and r.get("rows_per_txn", 1) == 1]
peer_sql = med(sq, "commits_per_s")
P("| ratio | value | numerator | denominator |\n|---|---|---|---|")
P("| agentd single-session steps/s ÷ Restate single-session steps/s | %s | %s | %s |" % (ratio(ag1, rs1), num(ag1), num(rs1)))
P("| agentd single-session steps/s ÷ SQLite FULL single-row commits/s (agentd_bench's baseline) | %s | %s | %s |" % (ratio(ag1, ag_sql), num(ag1), num(ag_sql)))
P("| agentd single-session steps/s ÷ SQLite FULL single-row commits/s (peers' raw sqlite_c) | %s | %s | %s |" % (ratio(ag1, peer_sql), num(ag1), num(peer_sql)))
P("| agentd 64-session aggregate steps/s ÷ Restate 8-session aggregate steps/s | %s | %s | %s |" % (ratio(ag64, rs8), num(ag64), num(rs8)))
P()
P("n/a: a figure is missing (benchmark not run, skipped or failed). The steps are not the same work: "
  "an agentd step makes two loopback HTTP calls and journals both, a peer step does nothing.")
P()

# ---- identity: Google Benchmark JSON of policy_bench and identity_bench
def gbench(path):
    """Median rows when the run had repetitions, else the plain rows."""
    try:
        with open(path) as f:
            rows = json.load(f).get("benchmarks", [])
    except (OSError, ValueError):
        return []
    meds = [r for r in rows if r.get("aggregate_name") == "median"]
    return meds or [r for r in rows if r.get("run_type", "iteration") == "iteration"]


ident = [(b, r) for b in ("identity", "policy") for r in gbench(os.path.join(out, b + ".json"))]
if ident:
    P("## Identity\n")
    P("| benchmark | time per operation (median of runs) | p50 | p99 | note |\n|---|---|---|---|---|")
    for b, r in ident:
        name = r.get("run_name") or r.get("name", "?")
        if r.get("error_occurred"):
            P("| %s_bench %s | FAILED | | | %s |" % (b, name, r.get("error_message", "")))
            continue
        unit = " " + r.get("time_unit", "ns").replace("us", "µs")
        P("| %s_bench %s | %s | %s | %s | %s |" % (
            b, name, num(r.get("real_time"), unit), num(r.get("p50_ns"), " ns"), num(r.get("p99_ns"), " ns"), r.get("label", "")))
    P()

# ---- sandboxes
S = {r.get("bench", "?"): r for r in read_jsonl(os.path.join(out, "sandbox.jsonl"))}
if S:
    P("## Sandboxes\n")
    P("| measurement | p50 | p99 | baseline / note |\n|---|---|---|---|")
    c = S.get("sandbox_cold_start", {})
    if c:
        t, b = c.get("to_first_command", {}), c.get("bare_bwrap_true", {})
        P("| bwrap sandbox: cold start to first command (`true`), a warm spare ready | %s | %s | bare `bwrap ... true` in the same run: p50 %s, ratio %s (aim 1.5) |" % (
            num(t.get("p50_ms"), " ms"), num(t.get("p99_ms"), " ms"), num(b.get("p50_ms"), " ms"), num(c.get("ratio_p50"))))
        n = c.get("to_first_command_launcher", {})
        if n:
            P("| the same with a spare launcher only (agentd not root) | %s | %s | ratio %s |" % (
                num(n.get("p50_ms"), " ms"), num(n.get("p99_ms"), " ms"), num(c.get("ratio_p50_launcher"))))
        n = c.get("to_first_command_no_spare", {})
        if n:
            P("| the same with no spare ready | %s | %s | ratio %s |" % (
                num(n.get("p50_ms"), " ms"), num(n.get("p99_ms"), " ms"), num(c.get("ratio_p50_no_spare"))))
    w = S.get("sandbox_warm_exec", {}).get("exec_true", {})
    if w:
        P("| bwrap sandbox: `exec` round trip, warm | %s | %s | |" % (num(w.get("p50_ms"), " ms"), num(w.get("p99_ms"), " ms")))
    m = S.get("sandbox_idle_memory", {})
    if m:
        P("| memory per idle sandbox | RSS %s KiB | | PSS %s KiB (shared pages split) |" % (num(m.get("rss_kib_each")), num(m.get("pss_kib_each"))))
    g = S.get("gvisor", {})
    if g.get("cold_start_to_first_command"):
        gc, gw = g["cold_start_to_first_command"], g.get("warm_exec_true", {})
        P("| gvisor sandbox (%s): cold start to first command | %s | %s | |" % (g.get("platform", "?"), num(gc.get("p50_ms"), " ms"), num(gc.get("p99_ms"), " ms")))
        P("| gvisor sandbox: `exec` round trip, warm | %s | %s | |" % (num(gw.get("p50_ms"), " ms"), num(gw.get("p99_ms"), " ms")))
    elif g:
        P("| gvisor sandbox | skipped | | %s |" % g.get("skipped", "?"))
    k = S.get("gvisor_checkpoint", {})
    for key, label in (("hibernate", "hibernate (a live process inside)"), ("resume_to_first_command", "resume to first command"),
                       ("resume_to_live_process_answer", "resume to the live process answering")):
        r = k.get(key, {})
        if r:
            P("| gvisor checkpoint: %s | %s | %s | |" % (label, num(r.get("p50_ms"), " ms"), num(r.get("p99_ms"), " ms")))
    if k.get("skipped"):
        P("| gvisor checkpoint | skipped | | %s |" % k["skipped"])
    ws = S.get("workspace_snapshot", {})
    for key, label in (("first_snapshot", "first snapshot, 10 MB in 1,000 files"), ("one_file_changed", "snapshot after a one-file change"),
                       ("unchanged", "snapshot, nothing changed"), ("restore", "restore of the 10 MB snapshot")):
        r = ws.get(key, {})
        if r:
            P("| workspace: %s | %s | %s | on %s |" % (label, num(r.get("p50_ms"), " ms"), num(r.get("p99_ms"), " ms"), ws.get("workspace_fs", "?")))
    P()
if warn or notes:
    P("## Notes\n")
    for w in warn + notes:
        P("- %s" % w)
    P()
PY

log "summary: $OUT/summary.md"
echo
cat "$OUT/summary.md"
exit "$EXIT_RC"
