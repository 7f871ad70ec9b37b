#!/bin/sh
# Makes a tiny git repository for the `tollgate run` quick start (README)
# in a new temporary directory, and prints its path.
set -eu
dir="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-hello.XXXXXX")/hello"
mkdir -p "$dir"
cd "$dir"
git init -q -b main
cat > greet.sh <<'SCRIPT'
#!/bin/sh
echo "Hello, world"
SCRIPT
cat > agent.sh <<'SCRIPT'
#!/bin/bash
# A stand-in for a coding agent: edits the repo, then tries the network.
echo "agent: setup left: $(cat .deps/installed)"
echo "agent: from ~/.bashrc: HELLO_FROM_BASHRC=${HELLO_FROM_BASHRC:-unset}"
sed -i 's/Hello, world/Hello, tollgate/' greet.sh
echo "notes from the agent" > NOTES.md
echo "agent: trying https://pypi.org/simple/ with internet off:"
curl -sS https://pypi.org/simple/ || true
SCRIPT
chmod +x greet.sh agent.sh
git add -A
git -c user.name=tollgate -c user.email=tollgate@localhost commit -q -m "hello"
echo "$dir"
