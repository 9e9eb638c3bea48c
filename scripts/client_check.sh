#!/usr/bin/env bash
# The base install is the client (issue 17): a fresh venv with `pip install .` and no extras imports
# gotd.client, holds neither torch nor numpy, and runs `gotd ingest` / `gotd select` against a server
# started from the full environment ($SERVER_PY). Server and lab commands name their extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SERVER_PY="${SERVER_PY:-.venv/bin/python}"
WORK=build/client-check
rm -rf "$WORK" && mkdir -p "$WORK"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --upgrade pip
"$WORK/venv/bin/python" -m pip install --quiet .
GOTD="$WORK/venv/bin/gotd"
"$WORK/venv/bin/python" - <<'PY'
import importlib.util
import gotd.client, gotd.client.cli  # noqa: F401
for heavy in ("torch", "numpy", "sentence_transformers", "faiss", "lmdb", "redis", "pyarrow"):
    assert importlib.util.find_spec(heavy) is None, f"the base install pulled {heavy}"
print("base install: gotd.client imports; no torch, numpy, sentence-transformers, faiss, lmdb, redis, pyarrow")
PY
"$WORK/venv/bin/python" - "$WORK" <<'PY'
import json, random, sys
work = sys.argv[1]
rnd = random.Random(0)
def unit(center):
    v = [c + rnd.gauss(0, 0.3) for c in center]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]
centers = [[rnd.gauss(0, 1) for _ in range(16)] for _ in range(4)]
with open(f"{work}/pool.jsonl", "w") as f:
    for i in range(200):
        f.write(json.dumps({"id": f"c{i}", "embedding": unit(centers[i % 4])}) + "\n")
with open(f"{work}/target.jsonl", "w") as f:
    for j in range(10):
        f.write(json.dumps({"id": f"t{j}", "embedding": unit(centers[0])}) + "\n")
PY
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$SERVER_PY" -m gotd.client.cli serve --listen 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "listening on" "$WORK/server.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(awk '/listening on/ {print $NF}' "$WORK/server.out")
test -n "$ADDR" || { echo "server did not start"; cat "$WORK/server.err"; exit 1; }
"$GOTD" ingest --server "$ADDR" --pool base "$WORK/pool.jsonl" | tee "$WORK/ingest.out"
grep -q "inserted 200" "$WORK/ingest.out"
"$GOTD" select --server "$ADDR" --pool base --target "$WORK/target.jsonl" -k 20 --output "$WORK/ranked.jsonl"
"$WORK/venv/bin/python" - "$WORK/ranked.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert [r["rank"] for r in rows] == list(range(1, 21)), rows
# The targets sit on cluster 0 (ids c0, c4, c8, ...): the top 20 must come from it.
assert all(int(r["id"][1:]) % 4 == 0 for r in rows), [r["id"] for r in rows]
print("base-install client: ingest 200, select top 20 all from the target's cluster")
PY
"$GOTD" select --server "$ADDR" --pool base --target "$WORK/target.jsonl" -k 5 --record-into given >/dev/null
"$GOTD" id-sets list --server "$ADDR" --pool base | tee "$WORK/idsets.out"
grep -q "^given 5$" "$WORK/idsets.out"
set +e
"$GOTD" serve --listen 127.0.0.1:0 2>"$WORK/serve.err"; status=$?
set -e
test "$status" -eq 2 && grep -q "pip install 'gotd\[server\]'" "$WORK/serve.err" \
  || { echo "gotd serve on the base install must exit 2 naming the server extra"; cat "$WORK/serve.err"; exit 1; }
echo "client-check passed"
