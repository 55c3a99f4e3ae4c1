# Sourced by the project's scripts: apt_install PACKAGE... installs Debian packages, from the
# package lists as they are, and after an `apt-get update` if that fails (a fresh machine has
# none). The retry's output goes to stderr, so a failure says why.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { apt-get update -qq >&2 && apt-get install -y -qq "$@" >&2; }
}
