#!/usr/bin/env bash
# docker/test_stack.sh: end-to-end test of docker/Dockerfile and docker/compose.yaml, run by hand (not part
# of the default test run: the first build downloads a CUDA build of torch, about 3 GB):
#
#   bash docker/test_stack.sh
#
# It builds the images, brings PostgreSQL and the MLflow server up, runs a 4-trial Optuna sweep on digits
# with two workers (`up --scale worker=2`), brings optuna-dashboard up (profile dashboard), checks that the
# MLflow server holds one parent run and four FINISHED child runs and that the PostgreSQL study holds four
# COMPLETE trials (docker/test/verify_stack.py), prints the build time, image sizes and sweep time, and
# tears the stack down (containers and volumes) whatever happens. Exits non-zero on any failure.
#
# Made for a machine without Docker Hub and without a docker bridge (dockerd --bridge=none
# --iptables=false): every container runs on the host's network and listens on 127.0.0.1 only
# (docker/test/compose.host.yaml), the base image is made with debootstrap (Debian bookworm minbase +
# python3, python3-venv, ca-certificates; made once, then reused), and PostgreSQL comes from
# docker/test/postgres.Dockerfile instead of postgres:16. Needs docker (a client matching the daemon, with
# BuildKit: 20.10 or a client with buildx), docker-compose (v1.29 or `COMPOSE="docker compose"`) and, for
# the base image, debootstrap (as root). Without the NVIDIA container toolkit the workers' GPU reservation
# is dropped from the test's copy of the compose file (TEST_GPU=1 keeps it).
#
# Environment (all optional):
#   BASE_IMAGE      base of the images (imgexp-test/base:bookworm, made with debootstrap when missing;
#                   e.g. python:3.11-slim where Docker Hub is reachable)
#   DEBIAN_MIRROR   for debootstrap and apt (http://deb.debian.org/debian)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL   http(s) PyPI mirrors, passed to the build as build args
#   PIP_CERT        a CA bundle pip must trust (a TLS-inspecting proxy), passed as the build secret pip_ca
#   TEST_PG_PORT, TEST_MLFLOW_PORT, TEST_DASHBOARD_PORT   ports on 127.0.0.1 (55432, 55000, 55080)
#   KEEP_IMAGES=0   also remove the built images at the end (default: keep them, so a rerun is quick)
#   DOCKER, COMPOSE the docker client and compose command (default: a docker client matching the daemon's
#                   version; docker-compose)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BASE_IMAGE=${BASE_IMAGE:-imgexp-test/base:bookworm}
IMAGE=imgexp-test/imgexp:latest
PG_IMAGE=imgexp-test/postgres:15
PROJECT=imgexp-test
PG_PORT=${TEST_PG_PORT:-55432}
MLFLOW_PORT=${TEST_MLFLOW_PORT:-55000}
DASHBOARD_PORT=${TEST_DASHBOARD_PORT:-55080}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEEP_IMAGES=${KEEP_IMAGES:-1}
COMPOSE=${COMPOSE:-docker-compose}
EXPERIMENT=stack-test
STUDY=stack-test
N_TRIALS=4
WORKERS=2
TMP=$(mktemp -d /tmp/imgexp-stack.XXXXXX)

log() { printf '\n== %s\n' "$*"; }
die() { printf 'test_stack: FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
seconds() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

# A docker client of the daemon's version: a newer static client (BuildKit through buildx only) would not
# build with the 20.10 daemon's builtin BuildKit.
pick_docker() {
    local c server
    for c in docker /usr/bin/docker; do
        command -v "$c" > /dev/null || continue
        server=$("$c" version --format '{{.Server.Version}}' 2> /dev/null) || continue
        if [ "$("$c" version --format '{{.Client.Version}}')" = "$server" ] || "$c" buildx version > /dev/null 2>&1; then
            echo "$c"; return
        fi
    done
    die "no docker client that can build with this daemon (is dockerd running?)"
}
DOCKER=${DOCKER:-$(pick_docker)}
command -v "${COMPOSE%% *}" > /dev/null || die "no $COMPOSE"
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1

compose() { $COMPOSE -p "$PROJECT" --env-file "$TMP/test.env" -f "$TMP/stack.yaml" "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT
    if [ -f "$TMP/stack.yaml" ]; then
        if [ "$rc" != 0 ]; then
            log "logs (the test failed)"
            compose --profile dashboard logs --no-color --tail 40 2>&1 || true
        fi
        log "teardown"
        compose --profile dashboard down -v --remove-orphans 2>&1 || true
    fi
    if [ "$KEEP_IMAGES" = 0 ]; then
        "$DOCKER" image rm -f "$IMAGE" "$PG_IMAGE" > /dev/null 2>&1 || true
    fi
    # debootstrap, if interrupted, may leave /proc, /sys or /dev mounted inside the rootfs: unmount, and never
    # let rm cross into another file system.
    grep -o " $TMP/rootfs[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2> /dev/null || true
    rm -rf --one-file-system "$TMP"
    [ "$rc" = 0 ] && echo "test_stack: PASSED" || echo "test_stack: FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT

# --------------------------------------------------------------------------- base image
if ! "$DOCKER" image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
    [ "$BASE_IMAGE" = imgexp-test/base:bookworm ] || die "base image $BASE_IMAGE is missing (docker pull it)"
    command -v debootstrap > /dev/null || die "debootstrap is needed for the base image (apt-get install debootstrap)"
    log "base image $BASE_IMAGE: debootstrap bookworm (minbase + python3, python3-venv, ca-certificates)"
    t0=$(now)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$TMP/rootfs" "$DEBIAN_MIRROR" > "$TMP/debootstrap.log" 2>&1 \
        || { tail -20 "$TMP/debootstrap.log"; die "debootstrap"; }
    rm -rf "$TMP"/rootfs/var/cache/apt/archives/*.deb "$TMP"/rootfs/var/lib/apt/lists/*
    tar -C "$TMP/rootfs" -c . | "$DOCKER" import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" > /dev/null
    rm -rf --one-file-system "$TMP/rootfs"
    echo "made $BASE_IMAGE in $(seconds "$t0" "$(now)") s"
else
    echo "base image $BASE_IMAGE: present"
fi

# --------------------------------------------------------------------------- images
log "build $IMAGE (docker/Dockerfile) and $PG_IMAGE (docker/test/postgres.Dockerfile)"
build_args=(--network host --build-arg "BASE_IMAGE=$BASE_IMAGE")
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    case "${!var:-}" in http://* | https://*) build_args+=(--build-arg "$var=${!var}") ;; esac
done
pip_secret=()
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    pip_secret=(--secret "id=pip_ca,src=$PIP_CERT")
fi
t0=$(now)
"$DOCKER" build "${build_args[@]}" "${pip_secret[@]}" -f "$HERE/Dockerfile" -t "$IMAGE" "$ROOT" \
    > "$TMP/build-imgexp.log" 2>&1 || { tail -40 "$TMP/build-imgexp.log"; die "docker build $IMAGE"; }
t1=$(now)
"$DOCKER" build "${build_args[@]}" -f "$HERE/test/postgres.Dockerfile" -t "$PG_IMAGE" "$HERE/test" \
    > "$TMP/build-postgres.log" 2>&1 || { tail -40 "$TMP/build-postgres.log"; die "docker build $PG_IMAGE"; }
t2=$(now)
BUILD_IMGEXP_S=$(seconds "$t0" "$t1")
BUILD_PG_S=$(seconds "$t1" "$t2")
size_mb() { "$DOCKER" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f", $1 / 1e6}'; }
echo "built $IMAGE in $BUILD_IMGEXP_S s ($(size_mb "$IMAGE") MB), $PG_IMAGE in $BUILD_PG_S s ($(size_mb "$PG_IMAGE") MB)"
"$DOCKER" run --rm "$IMAGE" --help > /dev/null || die "docker run $IMAGE --help"
echo "docker run $IMAGE --help: ok; user $("$DOCKER" run --rm --entrypoint id "$IMAGE" -un)"

# --------------------------------------------------------------------------- the compose file under test
PG_PASSWORD=test-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
KEEP_GPU=0
if [ "${TEST_GPU:-}" = 1 ] || { [ -z "${TEST_GPU:-}" ] && command -v nvidia-container-runtime-hook > /dev/null; }; then
    KEEP_GPU=1
fi
# Without GPUs the workers' trials still share out two made-up GPU ids (WORKER_GPU_IDS, the workers'
# IMGEXP_GPU_IDS: claimed per trial, the index changes nothing on the CPU), so the test sees both claimed.
FAKE_GPU_IDS=$([ "$KEEP_GPU" = 1 ] || echo 0,1)
cat > "$TMP/test.env" <<EOF
IMGEXP_IMAGE=$IMAGE
BASE_IMAGE=$BASE_IMAGE
POSTGRES_IMAGE=$PG_IMAGE
POSTGRES_USER=imgexp
POSTGRES_PASSWORD=$PG_PASSWORD
POSTGRES_HOST=127.0.0.1
POSTGRES_PORT=$PG_PORT
MLFLOW_HOST=127.0.0.1
MLFLOW_LISTEN=127.0.0.1
MLFLOW_PORT=$MLFLOW_PORT
MLFLOW_WORKERS=2
DASHBOARD_LISTEN=127.0.0.1
DASHBOARD_PORT=$DASHBOARD_PORT
EXPERIMENT=$EXPERIMENT
STUDY=$STUDY
N_TRIALS=$N_TRIALS
WORKER_GPU_IDS=$FAKE_GPU_IDS
SWEEP=epochs=1 data.subset=200 'optimizer.lr=tag(log,interval(1e-4,1e-2))'
EOF
# docker/compose.yaml with the host-network override, resolved into one file, less what this daemon cannot
# do: published ports, which host networking does not take (the servers listen on 127.0.0.1 themselves),
# and, where Docker has no NVIDIA driver to satisfy it, the workers' GPU reservation. (PyYAML from the
# image: nothing to install here.)
$COMPOSE -p "$PROJECT" --env-file "$TMP/test.env" -f "$HERE/compose.yaml" -f "$HERE/test/compose.host.yaml" \
    --profile dashboard config > "$TMP/resolved.yaml"
"$DOCKER" run --rm -i --entrypoint python "$IMAGE" -c '
import sys, yaml
stack = yaml.safe_load(sys.stdin)
for name, service in stack["services"].items():
    assert service.get("network_mode") == "host", f"{name} is not on the host network"
    service.pop("ports", None)
devices = stack["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
assert devices and devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] in ("all", -1), devices
if sys.argv[1] == "0":
    del stack["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
yaml.safe_dump(stack, sys.stdout, sort_keys=False)' "$KEEP_GPU" < "$TMP/resolved.yaml" > "$TMP/stack.yaml"
if [ "$KEEP_GPU" = 1 ]; then
    echo "workers reserve the GPUs, each trial claims one (deploy.resources.reservations.devices, as in compose.yaml)"
else
    echo "no NVIDIA container toolkit here: the workers' GPU reservation is left out of the test's copy"
fi

# --------------------------------------------------------------------------- PostgreSQL and MLflow
wait_healthy() {  # SERVICE TIMEOUT_S
    local id state deadline=$((SECONDS + $2))
    id=$(compose ps -q "$1")
    [ -n "$id" ] || die "no container for $1"
    while :; do
        state=$("$DOCKER" inspect --format '{{.State.Health.Status}}' "$id")
        [ "$state" = healthy ] && return
        [ "$("$DOCKER" inspect --format '{{.State.Running}}' "$id")" = true ] || die "$1 exited"
        [ "$SECONDS" -lt "$deadline" ] || die "$1 not healthy after $2 s ($state)"
        sleep 2
    done
}
log "up: postgres (127.0.0.1:$PG_PORT), mlflow (http://127.0.0.1:$MLFLOW_PORT)"
t0=$(now)
compose up -d postgres mlflow
wait_healthy postgres 120
wait_healthy mlflow 180
STACK_UP_S=$(seconds "$t0" "$(now)")
echo "postgres and mlflow healthy after $STACK_UP_S s"

# --------------------------------------------------------------------------- the sweep
log "sweep: $WORKERS workers, one study, $N_TRIALS trials (up -d --scale worker=$WORKERS worker)"
t0=$(now)
compose up -d --scale "worker=$WORKERS" worker
mapfile -t workers < <(compose ps -q worker)
[ "${#workers[@]}" = "$WORKERS" ] || die "expected $WORKERS worker containers, got ${#workers[@]}"
exits=$(timeout 900 "$DOCKER" wait "${workers[@]}") || die "workers still running after 900 s"
mapfile -t codes <<< "$exits"
[ "${#codes[@]}" = "$WORKERS" ] || die "no exit status for every worker: $exits"
SWEEP_S=$(seconds "$t0" "$(now)")
for i in "${!workers[@]}"; do
    echo "worker ${workers[$i]:0:12}: exit ${codes[$i]}; $("$DOCKER" logs "${workers[$i]}" 2>&1 | grep -cE '\[HYDRA\] trial [0-9]+: ') trial(s)"
done
for c in "${codes[@]}"; do [ "$c" = 0 ] || die "a worker exited $c"; done
# imgexp/gpus.py logs "claimed GPU <index> slot <k> ..." once per trial that claims
claimed=$(for w in "${workers[@]}"; do "$DOCKER" logs "$w" 2>&1 | grep -o 'claimed GPU [0-9]*' || true; done)
echo "${claimed:-no GPU claimed}" | sort | uniq -c | sed 's/^ */  /'
if [ -n "$FAKE_GPU_IDS" ]; then
    gpus=$(echo "$claimed" | sort -u | grep -c GPU || true)
    [ "$gpus" = "$(echo "$FAKE_GPU_IDS" | tr ',' '\n' | grep -c .)" ] \
        || die "the trials of the $WORKERS workers claimed $gpus of the GPUs $FAKE_GPU_IDS, not each"
fi
echo "sweep done in $SWEEP_S s"

# --------------------------------------------------------------------------- optuna-dashboard
log "up: dashboard (profile dashboard, http://127.0.0.1:$DASHBOARD_PORT)"
compose --profile dashboard up -d dashboard
python3 - "$DASHBOARD_PORT" "$STUDY" <<'EOF' || die "optuna-dashboard does not answer"
import json, sys, time, urllib.request
port, study = sys.argv[1], sys.argv[2]
for _ in range(60):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
            names = [s["study_name"] for s in json.load(r)["study_summaries"]]
        break
    except OSError:
        time.sleep(2)
else:
    sys.exit(1)
print(f"optuna-dashboard lists {names}")
sys.exit(0 if study in names else 1)
EOF

# --------------------------------------------------------------------------- verify
log "verify: the MLflow server and the PostgreSQL study"
printf '%s\n' PGHOST=127.0.0.1 "PGPORT=$PG_PORT" PGUSER=imgexp "PGPASSWORD=$PG_PASSWORD" \
    "MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT" > "$TMP/verify.env"
"$DOCKER" run --rm --network host --env-file "$TMP/verify.env" -v "$HERE/test:/test:ro" --entrypoint python \
    "$IMAGE" /test/verify_stack.py "$EXPERIMENT" "$STUDY" "$N_TRIALS" || die "verification"

log "figures"
echo "build: $IMAGE $BUILD_IMGEXP_S s, $PG_IMAGE $BUILD_PG_S s (cached layers are reused between runs)"
echo "image size: $IMAGE $(size_mb "$IMAGE") MB, $PG_IMAGE $(size_mb "$PG_IMAGE") MB, base $BASE_IMAGE $(size_mb "$BASE_IMAGE") MB"
echo "stack up (postgres + mlflow healthy): $STACK_UP_S s"
echo "sweep ($N_TRIALS trials, $WORKERS workers, digits, 1 epoch, 200 images): $SWEEP_S s"
