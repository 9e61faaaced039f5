#!/usr/bin/env bash
# Lint the deployment files, offline:
#   hadolint           deploy/Dockerfile
#   ShellCheck         deploy/lint.sh
#   docker-compose     docker-compose.yml (`config -q`, with deploy/compose.env.example)
#   kubernetes-validate --strict, Kubernetes 1.29 and 1.37 schemas: deploy/kubernetes/*.yaml
#                      and deploy/kubernetes/recovery/*.yaml
#   kustomization.yaml lists exactly the manifests beside it
# The linters are pip-installed into .venv on first use (deploy/lint-requirements.txt).
# Any finding, warning or error, fails the run (exit 1).
#   deploy/lint.sh             install if needed, then lint
#   deploy/lint.sh --install   only install the linters
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

VENV=${VENV:-.venv}
BIN=$VENV/bin
REQS=deploy/lint-requirements.txt
STAMP=$VENV/.lint-installed
K8S_DIR=deploy/kubernetes
K8S_VERSIONS=(1.29.0 1.37.0)

if [ ! -x "$BIN/python" ]; then
  echo "lint.sh: $BIN/python not found: run 'make install' first" >&2
  exit 2
fi
if [ ! -f "$STAMP" ] || [ "$REQS" -nt "$STAMP" ]; then
  echo "lint.sh: installing linters into $VENV from $REQS"
  "$BIN/pip" install -q --disable-pip-version-check -r "$REQS" || exit 2
  touch "$STAMP"
fi
[ "${1:-}" = "--install" ] && exit 0

failed=0
# run NAME CMD...: run a check; any output besides what it prints on success is a finding.
run() {
  local name=$1; shift
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ $rc -ne 0 ] || [ -n "$out" ]; then
    echo "FAIL $name"
    [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/     /'
    failed=1
  else
    echo "ok   $name"
  fi
}

run "hadolint deploy/Dockerfile ($("$BIN/hadolint" --version))" \
  "$BIN/hadolint" --no-color --failure-threshold style deploy/Dockerfile
run "shellcheck deploy/lint.sh" "$BIN/shellcheck" deploy/lint.sh
run "docker-compose config -q docker-compose.yml ($("$BIN/docker-compose" version --short))" \
  "$BIN/docker-compose" --project-directory . -f docker-compose.yml \
  --env-file deploy/compose.env.example config -q

manifests=()
for f in "$K8S_DIR"/*.yaml "$K8S_DIR"/recovery/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
# kubernetes-validate prints INFO for each resource that passed; WARN (e.g. an unknown kind
# or apiVersion) and ERROR are findings.
k8s_validate() {
  local version=$1; shift
  "$BIN/kubernetes-validate" --strict -k "$version" "$@" 2>&1 | grep -v '^INFO '
  return "${PIPESTATUS[0]}"
}
for v in "${K8S_VERSIONS[@]}"; do
  run "kubernetes-validate --strict -k $v: ${manifests[*]##*/}" k8s_validate "$v" "${manifests[@]}"
done
run "$K8S_DIR/kustomization.yaml lists every manifest" "$BIN/python" - "$K8S_DIR" <<'PY'
import pathlib, sys, yaml
d = pathlib.Path(sys.argv[1])
listed = set(yaml.safe_load((d / "kustomization.yaml").read_text())["resources"])
present = {p.name for p in d.glob("*.yaml")} - {"kustomization.yaml"}
for name in sorted(listed - present):
    print(f"listed but missing: {name}")
for name in sorted(present - listed):
    print(f"not listed: {name}")
PY

if [ $failed -ne 0 ]; then
  echo "lint.sh: findings above"
  exit 1
fi
echo "lint.sh: all deployment checks passed"
