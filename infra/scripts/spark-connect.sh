#!/usr/bin/env bash
# Start (or stop) a local Spark Connect server for the gateway's spark engine: local[2],
# listening on 127.0.0.1 only, offline (the server's jars come with the pyspark package of
# the given Python, the [spark] extra). Idempotent. `start` prints two lines: the
# SANDBOX_GATEWAY_SPARK_REMOTE URL, then "started" if this call started the server or
# "running" if it was already up — so a caller stops only what it started.
#   PYTHON=.venv/bin/python infra/scripts/spark-connect.sh start|stop
# Environment: SANDBOX_SPARK_PORT (15002), SANDBOX_SPARK_STATE (logs and pid file),
# SANDBOX_SPARK_MEMORY (driver memory, 2g), JAVA_HOME (Java 17 when unset).
set -euo pipefail
ACTION=${1:-start}
PORT=${SANDBOX_SPARK_PORT:-15002}
STATE=${SANDBOX_SPARK_STATE:-${TMPDIR:-/tmp}/sandbox-spark-$PORT}
PYTHON=${PYTHON:-python3}
SPARK_HOME=$("$PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))') || {
  echo "error: $PYTHON has no pyspark (pip install '.[spark]')" >&2; exit 1; }
if [ -z "${JAVA_HOME:-}" ]; then
  for candidate in /usr/lib/jvm/java-17-openjdk-*; do
    [ -x "$candidate/bin/java" ] && JAVA_HOME=$candidate && break
  done
fi
if [ -z "${JAVA_HOME:-}" ]; then
  echo "error: Java 17 not found (apt-get install openjdk-17-jre-headless)" >&2; exit 1
fi
export SPARK_HOME JAVA_HOME SPARK_PID_DIR=$STATE SPARK_LOG_DIR=$STATE
export SPARK_IDENT_STRING=sandbox-$PORT SPARK_LOCAL_IP=127.0.0.1 SPARK_CONF_DIR=$STATE/conf
mkdir -p "$STATE/conf"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

case "$ACTION" in
  start)
    if answers; then echo "sc://127.0.0.1:$PORT"; echo running; exit 0; fi
    "$SPARK_HOME/sbin/start-connect-server.sh" --master 'local[2]' \
      --driver-memory "${SANDBOX_SPARK_MEMORY:-2g}" \
      --conf spark.connect.grpc.binding.address=127.0.0.1 \
      --conf spark.connect.grpc.binding.port="$PORT" \
      --conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 \
      --conf spark.ui.enabled=false \
      --conf spark.sql.shuffle.partitions=4 \
      --conf spark.sql.warehouse.dir="$STATE/warehouse" \
      --conf spark.driver.extraJavaOptions=-Dderby.system.home="$STATE" >&2
    for _ in $(seq 1 240); do
      if answers; then echo "sc://127.0.0.1:$PORT"; echo started; exit 0; fi
      sleep 0.5
    done
    echo "error: Spark Connect did not answer on 127.0.0.1:$PORT; see $STATE" >&2
    exit 1
    ;;
  stop)
    "$SPARK_HOME/sbin/stop-connect-server.sh" >&2 || true
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2
    ;;
esac
