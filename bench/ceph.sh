#!/usr/bin/env bash
# A throw-away single-node Ceph cluster serving S3 (RADOS Gateway) on 127.0.0.1, for benchmarks.
#   bench/ceph.sh start DIR RGW_PORT ACCESS_KEY SECRET_KEY   -> prints the endpoint URL once S3 answers
#   bench/ceph.sh stop DIR                                  -> stops every daemon started from DIR
# Everything (config, mon store, a sparse bluestore file, logs, pid files) lives under DIR.
# One monitor, one OSD, pool size 1, no manager (RGW does not need one), auth none.
set -euo pipefail
cmd=$1 dir=$(realpath -m "$2")
WAIT_S=${CEPH_WAIT_S:-90}   # bring-up is ~18 s here; a slower, noisier machine gets headroom

stop() {
  for pidfile in "$dir"/run/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
  done
  for pidfile in "$dir"/run/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

wait_for() {  # wait_for WHAT COMMAND...: retry a command once a second until it succeeds or WAIT_S passes
  local what=$1; shift
  for _ in $(seq "$WAIT_S"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "ceph.sh: timed out after ${WAIT_S}s waiting for $what (logs in $dir/log)" >&2
  stop; exit 1
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start DIR PORT AK SK | stop DIR" >&2; exit 2; }
rgw_port=$3 access_key=$4 secret_key=$5

if ! command -v radosgw >/dev/null || ! command -v ceph-osd >/dev/null || ! command -v ceph-mon >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "ceph.sh: Ceph is not installed and we are not root" >&2; exit 1; }
  echo "ceph.sh: installing ceph-mon ceph-osd radosgw ceph-common" >&2
  install() { timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ceph-mon ceph-osd radosgw ceph-common >&2; }
  install || { timeout 300 apt-get update -qq >&2; install; }  # a fresh machine may have no package lists
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mon_port=$(free_port)
mkdir -p "$dir"/{run,log,mon/ceph-a,osd/ceph-0}
conf=$dir/ceph.conf
cat >"$conf" <<CONF
[global]
fsid = $(cat /proc/sys/kernel/random/uuid)
mon host = v2:127.0.0.1:$mon_port
mon initial members = a
public network = 127.0.0.0/8
# auth none: then the messenger must use crc, or radosgw waits 300 s for the monitor and gives up
auth cluster required = none
auth service required = none
auth client required = none
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
# one OSD: one copy, few placement groups, no health nagging
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
run dir = $dir/run
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
mon data = $dir/mon/ceph-\$id
osd data = $dir/osd/ceph-\$id
osd objectstore = bluestore
# a sparse file, so the OSD costs disk only for what is written
bluestore block create = true
bluestore block size = 64424509440
bluestore block db create = false
bluestore block wal create = false
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 268435456
[client.rgw.bench]
# tcp_nodelay: without it every small GET waits ~48 ms on Nagle + delayed ACK
rgw frontends = beast endpoint=127.0.0.1:$rgw_port tcp_nodelay=1
rgw dns name = 127.0.0.1
rgw thread pool size = 64
CONF

monmaptool --create --fsid "$(awk '/^fsid/{print $3}' "$conf")" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
touch "$dir/keyring"
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" 2>>"$dir/log/setup.log"
ceph-mon -c "$conf" -i a
wait_for "the monitor" timeout 5 ceph -c "$conf" mon stat
osd_id=$(timeout 30 ceph -c "$conf" osd create)
ceph-osd -c "$conf" -i "$osd_id" --mkfs 2>>"$dir/log/setup.log"
ceph-osd -c "$conf" -i "$osd_id"
wait_for "the OSD" bash -c "timeout 5 ceph -c '$conf' osd stat | grep -q '1 up'"
radosgw -c "$conf" -n client.rgw.bench
wait_for "the RADOS gateway" timeout 5 curl -sf -o /dev/null "http://127.0.0.1:$rgw_port/"
timeout 60 radosgw-admin -c "$conf" user create --uid bench --display-name bench \
  --access-key "$access_key" --secret-key "$secret_key" >/dev/null
echo "http://127.0.0.1:$rgw_port"
