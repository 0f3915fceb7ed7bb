# Shared by the bench/ scripts: `source bench/lib.sh` from the repository root.

# wait_for_port PORT: returns once something accepts connections on 127.0.0.1:PORT, or
# fails after 10 s naming the port (the server's log then says why).
wait_for_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing accepts connections on 127.0.0.1:$1 after 10 s" >&2
  return 1
}
