#!/usr/bin/env bash
# docs/tensorboard.png: TensorBoard's scalars of the runs under LOGDIR, as a user sees them at localhost:6006
# (VIEW=timeseries for the time-series tab, which also shows the evaluation images).
#   bash tools/screenshot/tensorboard.sh LOGDIR OUT.png [RUN_FILTER_REGEX]
# Needs node + npm (headless Chromium comes from the npm registry: @sparticuz/chromium).
set -euo pipefail
logdir=$1 out=$2 filter=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
[ -d /tmp/chrome/node_modules/@sparticuz/chromium ] || npm install --silent --prefix /tmp/chrome @sparticuz/chromium puppeteer-core
port=6123
tensorboard --logdir "$logdir" --port $port --host 127.0.0.1 >/tmp/tensorboard-shot.log 2>&1 &
tb=$!
trap 'kill $tb 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 1; done
url="http://127.0.0.1:$port/?darkMode=false#${VIEW:-scalars}"
[ -n "$filter" ] && url="$url&runFilter=$filter"
NODE_PATH=/tmp/chrome/node_modules node "$here/shot.js" "$url" "$out" 1400 1000 6000
echo "wrote $out"
