#!/usr/bin/env bash
# A shell session that shows the whole idea. Run it against a mounted demo:
#   scripts-ci/demo            (in one terminal)
#   mount-examples/session.sh  (in another)
set -euo pipefail
M=${1:-/tmp/peerfs-demo/mnt}
ex=$(dirname "$M")/data/examples

ls "$M"                                              # alice  bob
cp "$ex/hello.rhai" "$M/alice/inbox/" && jq . "$M/alice/outbox/hello.json"
echo 41 > "$M/alice/state/m"                         # state: one file per key
echo 'get("m") + 1' > "$M/alice/inbox/calc.rhai" && jq .value "$M/alice/outbox/calc.json"   # 42
cat "$M/bob/policy.cedar"                            # bob decides who may do what
cp "$ex/note.rhai" "$M/alice/peers/bob/inbox/"       # runs at bob, caller = alice
jq '{status, caller, target, value}' "$M/alice/peers/bob/outbox/note.json"
echo 'set("private", 1)' > "$M/alice/peers/bob/inbox/sneaky.rhai"
jq '{status, error}' "$M/alice/peers/bob/outbox/sneaky.json"   # denied: the policy says so
ls "$M/alice/peers/bob/state/"                       # what bob lets alice read
tail -n 5 "$M/bob/log"                               # every submission, run and denial
