#!/bin/sh
# Starts one Sentinel of the cuttle-sentinel StatefulSet, monitoring the master its peers know
# (or cuttle-redis-0 on the very first start). Sentinel rewrites its config file, so it is written
# to the pod's own volume at each start.
set -eu
me="$(hostname).cuttle-sentinel"
master=""
for i in 0 1 2; do
  peer="cuttle-sentinel-$i.cuttle-sentinel"
  [ "$peer" = "$me" ] && continue
  master=$(redis-cli -h "$peer" -p 26379 sentinel get-master-addr-by-name cuttle 2>/dev/null | head -n 1) || master=""
  [ -n "$master" ] && break
done
[ -n "$master" ] || master="cuttle-redis-0.cuttle-redis"
cat >/data/sentinel.conf <<CONF
port 26379
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $me
sentinel monitor cuttle $master 6379 2
sentinel auth-pass cuttle $REDIS_PASSWORD
sentinel down-after-milliseconds cuttle 5000
sentinel failover-timeout cuttle 60000
sentinel parallel-syncs cuttle 1
CONF
exec /usr/local/bin/redis-server /data/sentinel.conf --sentinel
