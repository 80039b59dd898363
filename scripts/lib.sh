# shellcheck shell=bash
# Shared by the scripts in this directory; sourced, not run.

say() { printf '%s: %s\n' "${script_name:-onephase}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${script_name:-onephase}" "$*" >&2; exit 1; }

apt_updated=0
# install_packages PKG...: installs the Debian packages that are not installed yet.
install_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "need root to install ${missing[*]}; install them, or run this as root"
  command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} by hand"
  if ((apt_updated == 0)); then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
  say "installing ${missing[*]}"
  # policy-rc.d keeps package scripts from starting services under an init that is not there;
  # the engines script starts them itself.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  ((created_policy == 0)) || rm -f "$policy"
}
