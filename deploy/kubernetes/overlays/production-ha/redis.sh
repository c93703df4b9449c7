#!/bin/sh
# Starts one Redis of the cuttle-redis StatefulSet: as a replica of the master the Sentinels name,
# or, when no Sentinel knows one yet (first start of the whole set), pod 0 as the master and the
# others as its replicas. Each announces its stable DNS name, which the Sentinels resolve.
set -eu
me="$(hostname).cuttle-redis"
master=""
for i in 0 1 2; do
  master=$(redis-cli -h "cuttle-sentinel-$i.cuttle-sentinel" -p 26379 sentinel get-master-addr-by-name cuttle 2>/dev/null | head -n 1) || master=""
  [ -n "$master" ] && break
done
[ -n "$master" ] || master="cuttle-redis-0.cuttle-redis"
set -- /usr/local/bin/redis-server --dir /data --appendonly yes --appendfsync everysec \
  --replica-announce-ip "$me" --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD"
if [ "$master" != "$me" ]; then
  set -- "$@" --replicaof "$master" 6379
fi
exec "$@"
