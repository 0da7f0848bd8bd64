#!/usr/bin/env bash
# Supply-chain checks (`make audit`, run by .ci/run):
#   1. bandit over services/ with bandit.yaml (each skipped test justified there);
#   2. pip-audit over requirements.lock (exact pins, so --no-deps: nothing is resolved or
#      installed), against a vulnerability service. Exceptions: .pip-audit-ignore, one ID a
#      line with its reason.
#
# pip-audit reports "No known vulnerabilities found" even when it could not look a package
# up at all (a mirror without the vulnerability data, no network), so a canary comes first:
# a pin with a published advisory (requests 2.31.0, GHSA-9wx4-h78v-vm56 / CVE-2024-35195)
# must be reported. If it is not, the vulnerability database is unreachable from here and the
# dependencies are NOT audited: that is said plainly. It fails the run where the service must be
# reachable (RADPIPE_REQUIRE_PIP_AUDIT=true: set it in CI that has the network); this project's
# CI machines reach only the package index, which serves no vulnerability data.
# Set PIP_AUDIT_SERVICE=osv (and PIP_AUDIT_OSV_URL for a mirror) to use OSV instead.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}

echo "bandit: services/ (config bandit.yaml)"
"$BIN/bandit" -c bandit.yaml -r services -q
echo "bandit: no findings"

service=(--vulnerability-service "${PIP_AUDIT_SERVICE:-pypi}")
if [ -n "${PIP_AUDIT_OSV_URL:-}" ]; then
  service+=(--osv-url "$PIP_AUDIT_OSV_URL")
fi
canary="$(mktemp)"
trap 'rm -f "$canary"' EXIT
echo "requests==2.31.0" > "$canary"
# pip-audit exits 1 when it finds the advisory: that is the answer wanted here.
canary_report="$("$BIN/pip-audit" "${service[@]}" --no-deps --disable-pip \
    --progress-spinner off -r "$canary" 2>&1 || true)"
if grep -q -E "GHSA-9wx4-h78v-vm56|CVE-2024-35195" <<<"$canary_report"; then
  ignores=()
  if [ -f .pip-audit-ignore ]; then
    while read -r id _; do
      case "$id" in ''|'#'*) ;; *) ignores+=(--ignore-vuln "$id");; esac
    done < .pip-audit-ignore
  fi
  echo "pip-audit: requirements.lock"
  # --strict: a package that cannot be looked up fails the audit instead of passing silently.
  "$BIN/pip-audit" "${service[@]}" --strict --no-deps --disable-pip --progress-spinner off \
    -r requirements.lock "${ignores[@]}"
else
  echo "pip-audit: the vulnerability database is unreachable from this machine (a known" >&2
  echo "advisory was not reported): the dependencies in requirements.lock were NOT audited." >&2
  if [ "${RADPIPE_REQUIRE_PIP_AUDIT:-}" = "true" ]; then
    echo "RADPIPE_REQUIRE_PIP_AUDIT=true: failing, an unaudited lock file is not a clean one." >&2
    echo "Point PIP_AUDIT_SERVICE/PIP_AUDIT_OSV_URL at a reachable vulnerability service." >&2
    exit 1
  fi
  echo "pip-audit NOT RUN (set RADPIPE_REQUIRE_PIP_AUDIT=true to make this a failure)" >&2
fi
