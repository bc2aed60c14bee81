#!/usr/bin/env bash
# `make docker`: build the image and run the compose stack on this machine, from a state where
# Docker was never set up, then check it through the gateway. Prints each check; exits non-zero
# on the first failure. Needs root (apt-get, dockerd, debootstrap).
#
# Steps: install docker.io, docker-compose and debootstrap if missing; start dockerd if it is not
# running; make local Debian bookworm base images with debootstrap (no image can be pulled here):
# one with Python 3.11 for the service, one with nginx for the gateway; build both images; check
# the image (at most 500 MB, no PyTorch, non-root, no compilers, no tests, no ONNX Runtime
# telemetry; an empty store unless DUPQ_SEED_FILE asks for the demo corpus); start the stack
# (PostgreSQL and three replicas behind the gateway); check /ready, /similarity, an add and
# /duplicates, a write on one replica found by a search and a GET on each of the others, a
# namespace with a filter, /export, the playground and /docs's script, a body over the gateway's
# cap, the per-client rate limit, data kept across a restart, and a model change as
# docs/operations.md gives it (dupq reembed in a replica, then one docker-compose up -d).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${PROJECT:-dupqcheck}
PORT=${DUPQ_PORT:-18080}
BASE_IMAGE=dupq-base:bookworm
GATEWAY_BASE_IMAGE=dupq-gateway-base:bookworm
POSTGRES_BASE_IMAGE=dupq-postgres-base:bookworm
REPLICAS=3
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo

step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

step "tools"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -q > /tmp/dupq-apt.log 2>&1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >> /tmp/dupq-apt.log 2>&1 \
        || { tail -20 /tmp/dupq-apt.log; fail "apt-get install ${missing[*]}"; }
fi
ok "docker $(docker --version | cut -d' ' -f3 | tr -d ,), $(docker-compose --version), debootstrap"

step "docker engine"
if ! docker info >/dev/null 2>&1; then
    $SUDO sh -c 'nohup dockerd > /var/log/dupq-dockerd.log 2>&1 &'
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 /var/log/dupq-dockerd.log; fail "dockerd did not start"; }
fi
ok "dockerd answers (storage driver $(docker info --format '{{.Driver}}'))"

make_base() {  # name, packages
    local name=$1 packages=$2 dir
    if docker image inspect "$name" >/dev/null 2>&1; then ok "base image $name exists"; return; fi
    dir=$(mktemp -d /tmp/dupq-rootfs.XXXXXX)
    $SUDO debootstrap --variant=minbase --include="$packages" bookworm "$dir" "$MIRROR" > "$dir.log" 2>&1 \
        || { tail -20 "$dir.log"; fail "debootstrap $name"; }
    $SUDO rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    $SUDO tar -C "$dir" -c . | docker import - "$name" >/dev/null
    $SUDO rm -rf "$dir" "$dir.log"
    ok "base image $name made with debootstrap ($packages)"
}
step "base images"
make_base "$BASE_IMAGE" python3,python3-venv,ca-certificates
make_base "$GATEWAY_BASE_IMAGE" nginx-light,ca-certificates
make_base "$POSTGRES_BASE_IMAGE" postgresql-15

step "CA bundle (for pip in the build stage only)"
mkdir -p build/docker-ca
[ -f "$CA_BUNDLE" ] && cp "$CA_BUNDLE" build/docker-ca/ca-certificates.crt
ok "build/docker-ca: $(ls build/docker-ca | tr '\n' ' ')"

step "images"
docker build -q --build-arg BASE="$BASE_IMAGE" -t dupq:latest . >/dev/null || fail "docker build dupq"
docker build -q --build-arg BASE="$GATEWAY_BASE_IMAGE" -t dupq-gateway:latest docker/gateway >/dev/null || fail "docker build gateway"
docker build -q --build-arg BASE="$POSTGRES_BASE_IMAGE" -t dupq-postgres:15 docker/postgres >/dev/null || fail "docker build postgres"
size=$(docker image inspect dupq:latest --format '{{.Size}}')
ok "dupq:latest is $((size / 1000000)) MB"
[ "$size" -le 500000000 ] || fail "image over 500 MB"
if docker run --rm --entrypoint python3 dupq:latest -c 'import torch' 2>/dev/null; then fail "PyTorch is in the image"; fi
ok "import torch fails in the image: serving runs on ONNX Runtime"
user=$(docker run --rm --entrypoint id dupq:latest -u)
[ "$user" != 0 ] && ok "runs as uid $user, not root" || fail "image runs as root"
if docker run --rm --entrypoint sh dupq:latest -c 'command -v gcc cc c++ clang g++ make' >/dev/null; then fail "a compiler is in the image"; fi
ok "no compiler in the image"
if docker run --rm --entrypoint sh dupq:latest -c 'ls -d /opt/dupq/tests /opt/venv/lib/python3*/site-packages/tests 2>/dev/null | grep -q .'; then fail "test files in the image"; fi
ok "no test files in the image"
kept=$(docker run --rm -e HOME=/tmp --entrypoint sh dupq:latest -c \
    'python3 -c "from model.encoder import load_encoder; load_encoder(\"/opt/dupq/models/dupq-qqp\").encode([\"Why?\"])" && find /tmp -type f') \
    || fail "the bundled model does not encode in the image"
[ -z "$kept" ] || fail "ONNX Runtime keeps telemetry in the image: $kept"
ok "no ONNX Runtime telemetry: an encoder run with a writable HOME leaves nothing there"

started_ready() {  # container name, port: /ready of a container started with -p, once it answers
    for _ in $(seq 60); do
        answer=$(curl -sf "http://127.0.0.1:$2/ready") && { echo "$answer"; return 0; }
        sleep 1
    done
    docker logs "$1" 2>&1 | tail -20 >&2
    return 1
}
for seed in "unset" "" "/opt/dupq/demo/questions.tsv"; do
    name=dupq-seedcheck
    docker rm -f "$name" >/dev/null 2>&1 || true
    if [ "$seed" = unset ]; then env=(); else env=(-e "DUPQ_SEED_FILE=$seed"); fi
    docker run -d --name "$name" -p 127.0.0.1:18089:8000 "${env[@]}" dupq:latest >/dev/null
    ready=$(started_ready "$name" 18089) || fail "a container with DUPQ_SEED_FILE $seed did not become ready"
    docker rm -f "$name" >/dev/null
    case "$seed" in
        /*) echo "$ready" | grep -q '"index_size":4000' || fail "the demo seed did not load: $ready" ;;
        *) echo "$ready" | grep -q '"index_size":0' || fail "a fresh volume is not empty with DUPQ_SEED_FILE $seed: $ready" ;;
    esac
    ok "DUPQ_SEED_FILE ${seed:-(empty)}: $ready"
done

step "backup and restore (one container)"
# docs/operations.md's recipe: dupq backup in the running container (the store and the index snapshot),
# docker cp, dupq restore into a new volume in a container of its own, then a service on that volume.
name=dupq-backupcheck
volume=dupq-backupcheck-data
backups=$(mktemp -d /tmp/dupq-backups.XXXXXX)
chmod 755 "$backups"
docker rm -f "$name" >/dev/null 2>&1 || true
docker volume rm "$volume" >/dev/null 2>&1 || true
docker run -d --name "$name" -p 127.0.0.1:18089:8000 -e DUPQ_SEED_FILE=/opt/dupq/demo/questions.tsv dupq:latest >/dev/null
started_ready "$name" 18089 >/dev/null || fail "the demo container did not become ready"
copied=$(docker exec "$name" sh -c 'mkdir -p /data/backups && dupq backup --out /data/backups/dupq.sqlite3') \
    || fail "dupq backup in the container"
echo "$copied" | grep -q '"questions": 4000, .*"index": "/data/backups/dupq.sqlite3.faiss"' || fail "dupq backup: $copied"
docker cp "$name:/data/backups" "$backups/" >/dev/null || fail "docker cp of the backup"
docker rm -f "$name" >/dev/null
put=$(docker run --rm -v "$volume:/data" -v "$backups/backups:/backups:ro" dupq:latest dupq restore /backups/dupq.sqlite3) \
    || fail "dupq restore into a new volume"
echo "$put" | grep -q '"index": "/data/index.faiss"' || fail "dupq restore put no index snapshot back: $put"
docker run -d --name "$name" -p 127.0.0.1:18089:8000 -v "$volume:/data" dupq:latest >/dev/null
ready=$(started_ready "$name" 18089) || fail "a container on the restored volume did not become ready"
docker logs "$name" 2>&1 | grep -q 'index snapshot loaded' || fail "the restored snapshot was not loaded"
docker rm -f "$name" >/dev/null
docker volume rm "$volume" >/dev/null
echo "$ready" | grep -q '"index_size":4000' || fail "the restored volume: $ready"
ok "dupq backup in a running container: ${copied:0:60}...; dupq restore: ${put:0:60}...; then $ready"

# A "new model" for the model change below: the bundled one under another version (the same
# vectors), which is what the service and dupq reembed go by.
MODELS=$(mktemp -d /tmp/dupq-models.XXXXXX)
trap 'rm -rf "$MODELS" "$backups"' EXIT
chmod 755 "$MODELS"
cp -r models/dupq-qqp "$MODELS/next"
NEXT_VERSION=$(python3 -c 'import json, sys
path = sys.argv[1] + "/next/config.json"
config = json.load(open(path))
config["version"] += "-check"
json.dump(config, open(path, "w"))
print(config["version"])' "$MODELS")
compose() {
    DUPQ_PORT=$PORT DUPQ_BASE_IMAGE=$BASE_IMAGE GATEWAY_BASE_IMAGE=$GATEWAY_BASE_IMAGE DUPQ_POSTGRES_IMAGE=dupq-postgres:15 \
        DUPQ_REPLICAS=$REPLICAS DUPQ_MODELS=$MODELS docker-compose -p "$PROJECT" "$@"
}
cleanup() { compose down -v >/dev/null 2>&1 || true; }
trap 'compose logs --tail=30 || true; cleanup' ERR
cleanup

step "compose stack"
# docs/operations.md's move from one container to replicas: the backup above loaded into the
# stack's PostgreSQL (DUPQ_STORE_URL of the compose file) before the replicas start.
compose up -d postgres >/dev/null 2>&1 || fail "docker-compose up -d postgres"
for _ in $(seq 60); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q postgres)")" = healthy ] && break
    sleep 1
done
moved=$(compose run --rm -T --no-deps -v "$backups/backups:/backups:ro" dupq dupq restore /backups/dupq.sqlite3 2>/tmp/dupq-move.log) \
    || { tail -5 /tmp/dupq-move.log; fail "dupq restore into the stack's PostgreSQL"; }
echo "$moved" | grep -q '"questions": 4000, "feedback": 0' || fail "dupq restore into the stack's PostgreSQL: $moved"
compose up -d >/dev/null 2>&1 || { compose up -d; fail "docker-compose up"; }
url="http://127.0.0.1:$PORT"
wait_ready() {
    for _ in $(seq 120); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/ready")" = 200 ] && return 0
        sleep 1
    done
    return 1
}
wait_ready || fail "/ready through the gateway"
ready=$(curl -s "$url/ready")
echo "$ready" | grep -q '"index_size":4000' || fail "the replicas on the loaded store: $ready"
demo=$(curl -s "$url/questions/demo-103")
echo "$demo" | grep -q 'Gmail account password' || fail "a question of the loaded store: $demo"
ok "the single container's backup loaded into PostgreSQL ($moved); /ready through the gateway: $ready"
published=$(docker ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Ports}}' | grep -c -- '->' || true)
[ "$published" = 1 ] && ok "only the gateway publishes a port" || fail "$published containers publish ports"
running=$(docker ps --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=dupq" -q | wc -l)
[ "$running" = "$REPLICAS" ] && ok "$running replicas of dupq on one PostgreSQL" || fail "$running replicas running, not $REPLICAS"

post() { curl -s -X POST -H 'content-type: application/json' "$url$1" -d "$2"; }
sim=$(post /similarity '{"question1": "How old are you?", "question2": "What is your age?"}')
echo "$sim" | grep -q '"similarity"' || fail "/similarity: $sim"
ok "/similarity: $sim"
added=$(post /questions '{"questions": [{"id": "docker-check-1", "text": "How do I learn to play the guitar quickly?"}]}')
echo "$added" | grep -q '"docker-check-1"' || fail "add: $added"
ok "add: $added"
found=$(post /duplicates '{"question": "What is the fastest way to learn guitar?", "k": 10}')
echo "$found" | grep -q '"docker-check-1"' || fail "/duplicates: $found"
ok "/duplicates finds it: ${found:0:160}..."

# Which replica answers each request: the gateway says (X-Served-By), round-robin over them all.
served_by() { grep -i '^x-served-by:' | tr -d '\r' | cut -d' ' -f2; }
writer=$(curl -s -D - -o /dev/null -X POST -H 'content-type: application/json' "$url/questions" \
    -d '{"questions": [{"id": "docker-replica-1", "text": "Which replica stored this question about sourdough bread?"}]}' | served_by || true)
[ -n "$writer" ] || fail "the gateway does not say which replica answered"
# Each round a search and a GET, each checked on whichever replica answered it. A GET made only
# after a search that another replica answered fell in step with the round-robin (the writer, a
# search elsewhere, the GET on the third, again), so that the third replica never searched and the
# loop ran into the gateway's rate limit.
declare -A searched=() got=()
for _ in $(seq 30); do
    by=$(curl -s -D - -o /tmp/dupq-replica.json -X POST -H 'content-type: application/json' "$url/duplicates" \
        -d '{"question": "Which replica stored the question about sourdough bread?", "k": 1}' | served_by || true)
    if [ -n "$by" ] && [ "$by" != "$writer" ]; then
        grep -q '"docker-replica-1"' /tmp/dupq-replica.json || fail "replica $by did not find what $writer stored: $(cat /tmp/dupq-replica.json)"
        searched[$by]=1
    fi
    headers=$(curl -s -D - -o /dev/null "$url/questions/docker-replica-1")
    by=$(echo "$headers" | served_by || true)
    if [ -n "$by" ] && [ "$by" != "$writer" ]; then
        echo "$headers" | grep -q '^HTTP/1.1 200' || fail "GET on replica $by of what $writer stored: $(echo "$headers" | head -1)"
        got[$by]=1
    fi
    [ ${#searched[@]} -ge $((REPLICAS - 1)) ] && [ ${#got[@]} -ge $((REPLICAS - 1)) ] && break
done
[ ${#searched[@]} -ge $((REPLICAS - 1)) ] || fail "searches reached ${#searched[@]} other replicas, not $((REPLICAS - 1))"
[ ${#got[@]} -ge $((REPLICAS - 1)) ] || fail "GETs reached ${#got[@]} other replicas, not $((REPLICAS - 1))"
ok "stored by replica $writer, found by a search and a GET on each of the other $((REPLICAS - 1)): ${!searched[*]}"
post /questions '{"questions": [{"id": "docker-ns-1", "text": "How do I reset my password?", "namespace": "helpdesk", "metadata": {"status": "open"}}]}' | grep -q docker-ns-1 || fail "add to a namespace"
found=$(post /duplicates '{"question": "Where can I change my password?", "namespace": "helpdesk", "filter": {"status": "open"}}')
echo "$found" | grep -q '"metadata":{"status":"open"}' || fail "/duplicates in a namespace, filtered: $found"
ok "contract 1.1, namespace and filter: ${found:0:160}..."
lines=$(curl -s "$url/export?namespace=helpdesk" | wc -l)
[ "$lines" = 1 ] || fail "/export through the gateway: $lines lines"
page=$(curl -s -w '\nHTTP %{http_code}' "$url/")
echo "$page" | grep -q "dupq playground" || fail "the playground through the gateway: $(echo "$page" | tail -c 300)"
bundle=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$url/docs/swagger-ui-bundle.js")
[ "${bundle%% *}" = 200 ] || fail "/docs's Swagger UI script through the gateway: $bundle"
ok "/export streams through the gateway; the playground answers at /, /docs's script ($bundle bytes) too"
big_code=$(head -c 2000000 /dev/zero | tr '\0' 'a' | curl -s -o /tmp/dupq-413.json -w '%{http_code}' -X POST -H 'content-type: application/json' --data-binary @- "$url/similarity")
[ "$big_code" = 413 ] && grep -q gateway /tmp/dupq-413.json || fail "body over the cap: $big_code $(cat /tmp/dupq-413.json)"
ok "a 2 MB body is refused by the gateway: 413 $(cat /tmp/dupq-413.json)"

limited=$(for _ in $(seq 150); do curl -s -o /dev/null -w '%{http_code}\n' "$url/health"; done | grep -c '^429$' || true)
[ "$limited" -gt 0 ] || fail "150 rapid requests from one client drew no 429"
ok "rate limit per client: $limited of 150 rapid requests got 429"

step "restart"
compose restart >/dev/null 2>&1
wait_ready || fail "/ready after restart"
# /ready through the gateway says one replica is ready; while the others still start, the gateway
# may answer 503 with Retry-After, which a client retries (app/client.py does): so does this.
for _ in $(seq 15); do
    kept=$(curl -s "$url/questions/docker-check-1")
    echo "$kept" | grep -q guitar && break
    sleep 1
done
echo "$kept" | grep -q guitar || fail "question lost across restart: $kept"
ok "kept across docker-compose restart: $kept"

step "model change"
# docs/operations.md's recipe: dupq reembed in each replica (the vectors into the store once, an
# index into each replica's volume), then the replicas recreated on the new model by one up -d.
for i in $(seq "$REPLICAS"); do
    staged=$(compose exec -T --index="$i" dupq dupq reembed --model-dir /models/next 2>/tmp/dupq-reembed.log) \
        || { tail -5 /tmp/dupq-reembed.log; fail "dupq reembed in replica $i"; }
    echo "$staged" | grep -q '"staged_in": "table staged_vectors' || fail "dupq reembed in replica $i: $staged"
    [ "$i" = 1 ] || echo "$staged" | grep -q '"encoded": 0,' || fail "dupq reembed in replica $i encoded again: $staged"
    ok "dupq reembed in replica $i: ${staged:0:150}..."
done
DUPQ_MODEL_DIR=/models/next compose up -d >/dev/null 2>&1 || fail "docker-compose up -d on the new model"
compose restart gateway >/dev/null 2>&1
for _ in $(seq 90); do
    served=0
    for _ in $(seq $((2 * REPLICAS))); do
        curl -s "$url/info" | grep -q "\"version\":\"$NEXT_VERSION\"" && served=$((served + 1))
    done
    [ "$served" = $((2 * REPLICAS)) ] && break
    sleep 1
done
[ "$served" = $((2 * REPLICAS)) ] || fail "not every replica serves $NEXT_VERSION: $(curl -s "$url/info")"
logs=$(compose logs --no-color dupq 2>&1)
took=$(echo "$logs" | grep -o 're-embedded [0-9]* questions in [0-9.]* s: [0-9]* staged, [0-9]* encoded' | tail -1)
echo "$took" | grep -q ' 0 encoded' || fail "no replica took the vectors staged in the store: $took"
loaded=$(echo "$logs" | grep -c 'index loaded from staged-' || true)
[ "$loaded" = "$REPLICAS" ] || fail "$loaded replicas of $REPLICAS loaded the index staged in their volume"
kept=$(post /duplicates '{"question": "What is the fastest way to learn guitar?", "k": 10}')
echo "$kept" | grep -q '"docker-check-1"' || fail "/duplicates on the new model: $kept"
ok "every replica serves $NEXT_VERSION; $took; each loaded the index staged in its volume"

trap - ERR
cleanup
printf '\nall docker checks passed\n'
