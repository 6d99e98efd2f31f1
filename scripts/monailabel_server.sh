#!/usr/bin/env bash
# Start the MONAI Label server for the AdaQAT app (monailabel_app/) on 127.0.0.1, offline.
#   bash scripts/monailabel_server.sh <studies-folder> [--port 8000] [--host 127.0.0.1] [--conf bundle_path <dir>] ...
# Makes .venv-monailabel first if needed. Extra arguments go to `monailabel start_server`. Bind another
# host only behind an authenticating proxy: the server has no authentication by default.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: $0 <studies-folder> [monailabel start_server options]" >&2
  exit 2
fi
studies="$(cd "$1" && pwd)"
shift
bash "$repo/scripts/setup_monailabel_env.sh"
host=127.0.0.1
port=8000
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --port|-p) port="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
# offline: no zoo queries, no model downloads, no telemetry of the bundled libraries
export MONAI_LABEL_DATASTORE_AUTO_RELOAD=${MONAI_LABEL_DATASTORE_AUTO_RELOAD:-true}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-file://$repo/.monailabel/mlruns}
export MONAI_LABEL_APP_DIR="$repo/monailabel_app"
# server state (sessions) in the repo's ignored .monailabel/, not in the user's home
export MONAI_LABEL_SESSION_PATH=${MONAI_LABEL_SESSION_PATH:-$repo/.monailabel/sessions}
cd "$repo"
# the `monailabel` launcher runs whatever `python` is first on PATH: call the module with the env's python
exec "$repo/.venv-monailabel/bin/python" -m monailabel.main start_server --app "$repo/monailabel_app" --studies "$studies" \
  --host "$host" --port "$port" --conf zoo_source github --conf sam2 false "${args[@]}"
