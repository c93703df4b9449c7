# A sample deployment script: runs on the agent, its output streams back to the dispatcher.
echo "hello from $(hostname) as $(id -un), ticket $CUTTLE_TICKET"
for step in fetch unpack migrate restart; do
  echo "step $step: ok"
  sleep 0.2
done
echo "a warning goes to stderr" >&2
exit 0
