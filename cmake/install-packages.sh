#!/bin/sh
# Installs the Debian packages named as arguments that are not installed yet. Silent when there is
# nothing to do; idempotent. Needs root (or sudo) only when something is missing.
set -e
missing=""
for package in "$@"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  case "$status" in
    *"ok installed"*) ;;
    *) missing="$missing $package" ;;
  esac
done
[ -z "$missing" ] && exit 0
echo "Installing missing packages:$missing"
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/tmp/strata-apt.log 2>&1 || {
  echo "apt-get install failed; see /tmp/strata-apt.log" >&2
  tail -20 /tmp/strata-apt.log >&2
  exit 1
}
echo "Installed:$missing"
