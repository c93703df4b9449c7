#!/usr/bin/env bash
# Installs Cuttle's binaries, man pages and shell completions where a Debian-like system looks
# for them:
#
#   PREFIX/bin/{dispatcher,worker-agent}
#   PREFIX/share/man/man1/*.1                              (docs/reference/man, generated from the CLI)
#   PREFIX/share/bash-completion/completions/{dispatcher,worker-agent}
#   PREFIX/share/zsh/vendor-completions/_{dispatcher,worker-agent}
#   PREFIX/share/fish/vendor_completions.d/{dispatcher,worker-agent}.fish
#
#   ./deploy/local/install.sh                 # builds in release mode first if needed; as root
#
# Environment: PREFIX (/usr/local), DESTDIR (empty: stage into DESTDIR/PREFIX for a package),
# BIN_DIR (target/release: where the built binaries are; they are built there when missing).
# The completions are the binaries' own (`dispatcher completions bash`, ...), so they always
# match the installed version.
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { printf 'cuttle: %s\n' "$*" >&2; }

prefix=${PREFIX:-/usr/local}
dest=${DESTDIR:-}
bin_dir=${BIN_DIR:-target/release}
binaries=(dispatcher worker-agent)

if [ ! -x "$bin_dir/dispatcher" ] || [ ! -x "$bin_dir/worker-agent" ]; then
  [ "$bin_dir" = target/release ] || { say "no built binaries in $bin_dir"; exit 1; }
  say "building the binaries (cargo build --release --locked --bins)"
  cargo build --release --locked --bins
fi

root="$dest$prefix"
for binary in "${binaries[@]}"; do
  install -D -m 0755 "$bin_dir/$binary" "$root/bin/$binary"
  "$bin_dir/$binary" completions bash | install -D -m 0644 /dev/stdin "$root/share/bash-completion/completions/$binary"
  "$bin_dir/$binary" completions zsh | install -D -m 0644 /dev/stdin "$root/share/zsh/vendor-completions/_$binary"
  "$bin_dir/$binary" completions fish | install -D -m 0644 /dev/stdin "$root/share/fish/vendor_completions.d/$binary.fish"
done
install -d -m 0755 "$root/share/man/man1"
install -m 0644 docs/reference/man/*.1 "$root/share/man/man1/"
say "installed ${binaries[*]}, $(ls docs/reference/man/*.1 | wc -l) man pages and bash, zsh and fish completions under $root"
