#!/usr/bin/env bash
# HTTP/2 conformance of the listener: h2spec against a cleartext HTTP/2 listener, a TLS
# listener (ALPN h2) and the default auto listener (HTTP/1.1 + h2c on one port).
#
# Usage: bench/h2spec.sh            (needs ../shared/tools/bin/h2spec and openssl)
# The auto listener fails 3.5/2 by design: "INVALID CONNECTION PREFACE" is a malformed HTTP/1
# request there and gets the 400 RFC 9112 asks for, which h2spec cannot read as a frame.
set -euo pipefail
cd "$(dirname "$0")/.."
H2SPEC=${H2SPEC:-../shared/tools/bin/h2spec}
[ -x "$H2SPEC" ] || { echo "missing $H2SPEC" >&2; exit 1; }
cargo build --release --quiet
BIN=$PWD/target/release/vivremotion
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" -days 1 \
  -subj /CN=localhost 2>/dev/null
cat > "$W/h2spec.toml" <<TOML
[proxy]
workers = 1
[admin]
listen = "127.0.0.1:19911"
[[listeners]]
name = "h2c"
listen = "127.0.0.1:18191"
protocol = "http2"
[[listeners]]
name = "tls"
listen = "127.0.0.1:18192"
tls = { cert_file = "$W/cert.pem", key_file = "$W/key.pem" }
[[listeners]]
name = "auto"
listen = "127.0.0.1:18193"
[clusters.backend]
endpoints = ["127.0.0.1:18190"]
[[routes]]
name = "all"
cluster = "backend"
TOML
"$BIN" demo-upstream --listen 127.0.0.1:18190 --latency-ms 0 2>/dev/null &
"$BIN" proxy --config "$W/h2spec.toml" >/dev/null 2>&1 &
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18193) 2>/dev/null && break; sleep 0.1; done
rc=0
for spec in "h2c|-p 18191" "tls|-t -k -p 18192" "auto|-p 18193"; do
  name=${spec%%|*}; args=${spec#*|}
  # shellcheck disable=SC2086
  line=$("$H2SPEC" -h 127.0.0.1 $args -P / -o 5 2>&1 | tail -1) || true
  printf '%s\t%s\n' "$name" "$line"
  [ "$name" = auto ] || [[ "$line" == *" 0 failed"* ]] || rc=1
done
exit $rc
