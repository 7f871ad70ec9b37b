#!/bin/sh
# Makes the tiny git repository of the `tollgate run` quick start (README)
# and prints its path. It lives in your cache directory and is made once:
# run again, it prints the same path, so a second `tollgate run` on it
# resumes the cached setup.
set -eu
dir="${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/hello"
if git -C "$dir" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    echo "$dir"
    exit 0
fi
rm -rf "$dir"
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
