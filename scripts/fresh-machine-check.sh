#!/bin/sh
# Checks the README's two commands as a new user meets them: on a fresh Debian 12 with only
# make and git added, from a clone in root's 0700 home.
#
# Builds a Debian 12 root with debootstrap (minbase, plus make, git and ca-certificates)
# from the host's Debian mirror, copies in the host's extra CA certificates (a network that
# inspects TLS needs them to reach the package registries) and its /etc/hosts and
# /etc/resolv.conf, clones this repository's HEAD into /root/agentd inside it, then, in a
# bubblewrap container on that root (a plain chroot cannot make the user namespaces the
# sandboxes need), runs `make test`, then `make run` and checks /readyz and one offline
# quickstart turn. Prints each step's result and time; exits non-zero when one fails.
#
# Needs root, debootstrap and bwrap on the host, and the network. Takes most of an hour on
# two cores (the build from scratch): too slow for CI. Run it before resolving an issue
# that changes dependencies or set-up.
#
# Usage: scripts/fresh-machine-check.sh [WORK_DIR]   (default /var/tmp/agentd-fresh-machine;
#        the root is made afresh there each time and left for inspection)
set -eu
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-/var/tmp/agentd-fresh-machine}"
ROOT="$WORK/root"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
LOG="$WORK/log"

if [ "$(id -u)" != 0 ]; then echo "fresh-machine-check: run as root" >&2; exit 2; fi
for tool in debootstrap bwrap git; do
  command -v "$tool" >/dev/null 2>&1 || { echo "fresh-machine-check: $tool is not installed" >&2; exit 2; }
done

failed=0
# step NAME COMMAND...: runs COMMAND, its output into $LOG/NAME.log, and prints the result.
step() {
  name="$1"; shift
  start=$(date +%s)
  if "$@" >"$LOG/$name.log" 2>&1; then result=ok; else result="FAILED (exit $?)"; failed=1; fi
  echo "fresh-machine-check: $name: $result in $(( $(date +%s) - start )) s (log: $LOG/$name.log)"
  [ "$result" = ok ]
}

# Unmounts whatever an earlier run left mounted under the root, then removes it.
clean_root() {
  if [ -d "$ROOT" ]; then
    grep -o " $ROOT[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf "$ROOT"
  fi
}

make_root() {
  debootstrap --variant=minbase --include=make,git,ca-certificates bookworm "$ROOT" "$MIRROR"
  # The host's apt sources (its mirror, updates and security), its extra CA certificates,
  # and how it resolves names.
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$ROOT/etc/apt/sources.list.d/"
    rm -f "$ROOT/etc/apt/sources.list"
  fi
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp -r /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp /etc/hosts /etc/resolv.conf "$ROOT/etc/"
  chroot "$ROOT" update-ca-certificates
  chmod 0700 "$ROOT/root"
  git clone --quiet "$REPO" "$ROOT/root/agentd"
  git -C "$ROOT/root/agentd" log --oneline -1
}

# Runs a shell command as root inside the container, in /root/agentd.
in_container() {
  # The host's /proc, not a new one: the sandboxes inside mount a proc of their own, which
  # the kernel allows only where a proc is fully visible (bwrap's --proc covers parts of it).
  bwrap --bind "$ROOT" / --dev /dev --tmpfs /dev/shm --bind /proc /proc --tmpfs /run --tmpfs /tmp \
    --bind /sys /sys --unshare-uts --unshare-ipc --die-with-parent \
    --clearenv --setenv HOME /root --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --setenv LANG C.UTF-8 --setenv NODE_EXTRA_CA_CERTS /etc/ssl/certs/ca-certificates.crt \
    --chdir /root/agentd /bin/sh -c "$1"
}

# `make run`, then what a newcomer does first: /readyz, then the README's offline
# quickstart turn against the fake model.
RUN_CHECK='set -eu
make run LISTEN=127.0.0.1:18080 > /tmp/run.log 2>&1 &
for i in $(seq 1 600); do
  if curl -fsS http://127.0.0.1:18080/readyz >/dev/null 2>&1; then break; fi
  sleep 1
done
curl -fsS http://127.0.0.1:18080/readyz; echo
build/bin/fake_model --listen 127.0.0.1:19100 > /tmp/fake_model.log 2>&1 &
export AGENTD_API_KEY=$(cat var/admin.key) AGENTD_URL=http://127.0.0.1:18080
cat > /tmp/agent.yaml <<YAML
name: quickstart
instructions: You are a helpful agent.
model: {provider: openai-chat, name: fake-1, base_url: "http://127.0.0.1:19100/v1"}
tools:
  - {type: builtin, name: exec}
YAML
AGENT=$(build/bin/agentctl agents create -f /tmp/agent.yaml)
SESSION=$(build/bin/agentctl sessions create --agent "$AGENT")
build/bin/agentctl turn "$SESSION" "say hello" --no-stream | tee /tmp/turn1
grep -q hello /tmp/turn1
build/bin/agentctl turn "$SESSION" "call exec {\"command\": \"echo from-the-sandbox; id -u\"}" --no-stream | tee /tmp/turn2
grep -q from-the-sandbox /tmp/turn2
# The host'"'"'s processes are visible here: stop only this check'"'"'s.
pkill -TERM -f -- "--listen 127.0.0.1:18080"
pkill -TERM -f -- "--listen 127.0.0.1:19100"
wait
'

mkdir -p "$WORK"
clean_root
mkdir -p "$LOG"
total=$(date +%s)
step debootstrap make_root || { echo "fresh-machine-check: no root to test in"; exit 1; }
step make-test in_container 'make test' || true
tail -n 4 "$LOG/make-test.log" | sed 's/^/  make test: /'
step make-run in_container "$RUN_CHECK" || true
tail -n 3 "$LOG/make-run.log" | sed 's/^/  make run: /'
echo "fresh-machine-check: $( [ $failed = 0 ] && echo passed || echo FAILED ) in $(( $(date +%s) - total )) s"
exit $failed
