#!/usr/bin/env bash
# Checks the operations examples shipped in packaging/ with the real tools (scripts/setup.sh
# installs them from Debian: prometheus for promtool, nginx-light for nginx):
#   - the Prometheus alert rules: `promtool check rules`, then `promtool test rules`, whose
#     unit tests fire every alert on synthetic series and keep it quiet just below;
#   - the example cloud config: `dmr-cloud check-config` of the built binary;
#   - the nginx example: `nginx -t` inside a throwaway prefix, with a self-signed certificate
#     standing in for the real one.
# Takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in promtool nginx openssl; do
  command -v "$t" >/dev/null || { echo "check-ops-configs: $t not found; run scripts/setup.sh" >&2; exit 1; }
done

( cd packaging/prometheus
  promtool check rules dmr-alerts.yml
  promtool test rules dmr-alerts.test.yml )

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=lock.example.com \
  -keyout "$tmp/privkey.pem" -out "$tmp/fullchain.pem" 2>/dev/null
sed "s|/etc/ssl/dmr/|$tmp/|g" packaging/nginx/dmr-cloud.conf > "$tmp/dmr-cloud.conf"
cat > "$tmp/nginx.conf" <<CONF
pid $tmp/nginx.pid;
error_log $tmp/error.log;
events {}
http {
    access_log off;
    include $tmp/dmr-cloud.conf;
}
CONF
nginx -t -q -p "$tmp" -c "$tmp/nginx.conf"
echo "nginx: packaging/nginx/dmr-cloud.conf OK"

# The example cloud config shipped in the package must pass the binary's own validation (a merge
# once left two [mqtt] tables in it). The installed web directory is swapped for this checkout's
# build; the master key is a throwaway one. (The agent's example needs an enrollment first:
# edge-agent's config tests check it with one.)
[ -x target/debug/dmr-cloud ] || { echo "check-ops-configs: target/debug/dmr-cloud not built; run cargo build first" >&2; exit 1; }
DMR_MASTER_KEY=$(head -c 32 /dev/urandom | base64) DMR_SERVER_WEB_DIR=$PWD/cloud/web/dist \
  target/debug/dmr-cloud check-config --config packaging/cloud.example.toml >/dev/null
echo "dmr-cloud: packaging/cloud.example.toml OK"
