#!/usr/bin/env bash
# viewsync: the two commands a newcomer needs, from a clean clone on a fresh machine.
#
#   ./run.sh demo    set up everything, start the stack, load sample data, run the worker
#   ./run.sh test    set up everything, start the tests' own stack, run lint, types and
#                    all tests
#
# Both bootstrap what they need: the Python virtualenv in .venv/, Debian packages (MariaDB,
# PostgreSQL) and the Java components from Maven Central (cached in ~/.m2). Re-running is
# safe: every step is idempotent. The tests run on a stack instance of their own (own state
# directory and ports: `viewsync stack --instance test status`), so `./run.sh test` leaves
# the demo stack exactly as it was.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

log() { printf '==> %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "run.sh: '$1' is required ($2)" >&2; exit 1; }
}

setup() {
  local instance=("$@")
  need java "Java 17+ runs Kafka, Connect and the schema registry"
  need mvn "Maven fetches Kafka, Debezium and Apicurio from Maven Central"
  need "$PYTHON" "Python 3.11"
  local stamp=.venv/.viewsync-installed
  if [ ! -x .venv/bin/viewsync ] || [ pyproject.toml -nt "$stamp" ]; then
    log "Python environment in .venv/"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
  fi
  log "stack ${instance[*]} (Kafka, Connect + Debezium, registry, MariaDB x2, PostgreSQL)"
  .venv/bin/viewsync stack "${instance[@]}" up
}

# What only the tests use: Prometheus scrapes a worker, headless Chromium loads its status
# page (Debian packages; Playwright's own browser downloads are not reachable everywhere).
test_tools() {
  local missing=()
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: the tests need ${missing[*]}: sudo apt-get install -y" \
      "--no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  log "test tools: apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >/dev/null
  # The package may start its own Prometheus; the tests run their own.
  service prometheus stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  demo)
    setup
    products=${VIEWSYNC_DEMO_PRODUCTS:-1000}
    # The demo catalogue's SKUs are SKU-<id>: seed it unless it is there (other rows, say
    # from your own experiments, do not count).
    have=$(.venv/bin/python -c 'import sqlalchemy as sa; from app.settings import load_settings
e = sa.create_engine(load_settings().product_url())
with e.connect() as c: print(c.execute(sa.text("SELECT COUNT(*) FROM products WHERE sku LIKE :p"), {"p": "SKU-%"}).scalar())')
    if [ "$have" = "0" ]; then
      log "sample data: $products products"
      .venv/bin/viewsync demo seed --products "$products"
    else
      log "sample data: the demo catalogue is there ($have products)"
    fi
    log "worker (Ctrl-C stops it cleanly); views: order.product_view, purchase.product_view, purchase.batch_view"
    exec .venv/bin/viewsync worker
    ;;
  test)
    setup --instance test
    test_tools
    log "ruff"
    .venv/bin/ruff check .
    log "mypy --strict"
    .venv/bin/mypy
    log "pytest (unit + integration against the real stack)"
    set +e
    .venv/bin/python -m pytest tests "${@:2}"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "run.sh: pytest collected no tests; that is a failure" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  *)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
