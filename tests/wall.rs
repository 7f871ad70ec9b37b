//! The sandbox's wall (issue 11 and the red team that attacked it): root
//! inside is an unprivileged host uid, nothing the host owns can be used
//! with more than that uid's rights, limits hold, and nothing a caller or
//! another user hands tollgate (a socket on stdin, a planted directory)
//! becomes a way out. As root, with real namespaces, real device nodes and
//! real sockets; every way out has a canary that must stay untouched.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A scratch directory on the host's root file system (the base of an
/// `exec`), readable by everyone so the sandbox can reach what is in it.
fn scratch_on_root_fs(name: &str) -> RemoveOnDrop {
    let dir = PathBuf::from(format!("/var/tmp/tollgate-wall-{name}-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    RemoveOnDrop(dir)
}

fn mknod(path: &Path, mode: u32, major: u64, minor: u64) {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(mode),
        nix::sys::stat::makedev(major, minor),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every `ATTEMPT name rc=N` the script printed must have failed.
fn all_refused(out: &Done, expected: usize) {
    let attempts: Vec<(&str, i32)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("ATTEMPT ")?;
            let (name, rc) = rest.split_once(" rc=")?;
            Some((name, rc.trim().parse().ok()?))
        })
        .collect();
    assert_eq!(attempts.len(), expected, "{out:#?}");
    for (name, rc) in attempts {
        assert_ne!(rc, 0, "{name} succeeded inside the sandbox: {out:#?}");
    }
}

// ---------------------------------------------------------------------------
// Standard streams

/// A connected TCP socket on fd 0 belongs to the host's network namespace:
/// disconnected (connect AF_UNSPEC) and connected again, it reaches any
/// address the host does, past the proxy.
#[test]
fn a_network_socket_as_a_standard_stream_is_refused() {
    require_root!();
    let canary = Canary::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _peer = listener.accept().unwrap();
    let reconnect = format!(
        r#"
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
unspec = struct.pack("H14x", 0)
libc.connect(0, unspec, len(unspec))
s = socket.socket(fileno=0)
s.connect(("127.0.0.1", {port}))
s.sendall(b"ESCAPED")
print("RECONNECTED")
"#,
        port = canary.addr.port()
    );
    let stdin = Stdio::from(OwnedFd::from(stream));
    let mut command = exec_command(&[], &["python3", "-c", &reconnect]);
    let out = start_exec_with(&mut command, stdin).finish(EXEC_LIMIT);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr.contains("standard input is a TCP socket"),
        "{out:#?}"
    );
    assert!(!out.stdout.contains("RECONNECTED"), "{out:#?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        canary.untouched(),
        "the sandbox reached the host's loopback"
    );
}

/// A unix stream socket cannot be aimed anywhere else: it passes.
#[test]
fn a_unix_stream_socket_as_standard_input_passes() {
    require_root!();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut ours, b"through-a-socketpair\n").unwrap();
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    let stdin = Stdio::from(OwnedFd::from(theirs));
    let out = start_exec_with(&mut exec_command(&[], &["cat"]), stdin).finish(EXEC_LIMIT);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "through-a-socketpair\n");
}

/// With a terminal on stdout and stderr but stdin a pipe, the command
/// reads the pipe (and sees its end), not the terminal made for it.
#[test]
fn piped_stdin_reaches_the_command_when_only_stdout_is_a_terminal() {
    require_root!();
    let line = format!(
        "echo piped-through | TOLLGATE_STATE_DIR={NO_STATE} {BIN} exec --policy off -- cat"
    );
    let out = tool(Command::new("timeout").args(["20", "script", "-qec", &line, "/dev/null"]));
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("piped-through"), "{out:#?}");
}

/// A broken standard error (a pipe nobody reads) is no reason to panic:
/// the error is still an error, with exit status 2.
#[test]
fn a_broken_standard_error_does_not_make_tollgate_panic() {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let status = Command::new(BIN)
        .args(["exec", "--policy", "/nonexistent/policy.yaml", "--", "true"])
        .env("TOLLGATE_STATE_DIR", NO_STATE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(write))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "{status:?}");
}

// ---------------------------------------------------------------------------
// Device nodes, sockets and FIFOs of the host

/// The base is the host's `/`, idmapped: a root-only device node anywhere
/// on it (a chroot's /dev, a container's rootfs) would be the sandbox
/// root's own. The root and every bind are nodev, so none opens.
#[test]
fn device_nodes_outside_dev_cannot_be_opened() {
    require_root!();
    let dir = scratch_on_root_fs("nodes");
    let rw = dir.0.join("rw");
    std::fs::create_dir(&rw).unwrap();
    owned_by_sandbox_root(&rw);
    mknod(&dir.0.join("zero"), 0o600, 1, 5);
    mknod(&dir.0.join("null"), 0o666, 1, 3);
    mknod(&rw.join("null"), 0o666, 1, 3);
    let d = dir.0.display();
    let out = sh(
        &[
            "--bind",
            &format!("{}:/rw", rw.display()),
            "--ro-bind",
            &format!("{d}:/ro"),
        ],
        &format!(
            r#"
head -c 1 {d}/zero >/dev/null 2>&1; echo "ATTEMPT base-root-only rc=$?"
echo x 2>/dev/null > {d}/null; echo "ATTEMPT base-open rc=$?"
echo x 2>/dev/null > /rw/null; echo "ATTEMPT bind rc=$?"
echo x 2>/dev/null > /ro/null; echo "ATTEMPT ro-bind rc=$?"
echo x > /dev/null && echo "DEVNULL ok"
"#
        ),
    );
    all_refused(&out, 4);
    assert_eq!(out.expect_value("DEVNULL"), "ok", "{out:#?}");
}

/// /dev is read-only and the masks over /proc files are read-only binds:
/// no node can be added, and no mode, owner or time of a node (or of the
/// host's) changes, whatever root inside tries.
#[test]
fn device_nodes_and_masks_cannot_be_changed_and_the_hosts_stay_as_they_were() {
    require_root!();
    let nodes = ["null", "zero", "full", "random", "urandom", "tty"];
    let before: Vec<_> = nodes
        .iter()
        .map(|n| std::fs::metadata(format!("/dev/{n}")).unwrap())
        .collect();
    let mut script = String::from(
        "mkfifo /dev/added 2>/dev/null; echo \"ATTEMPT add-node rc=$?\"\n\
         rm -f /dev/null 2>/dev/null; echo \"ATTEMPT remove-node rc=$?\"\n",
    );
    for node in nodes {
        script.push_str(&format!(
            "chmod 000 /dev/{node} 2>/dev/null; echo \"ATTEMPT chmod-{node} rc=$?\"\n\
             chown 1:1 /dev/{node} 2>/dev/null; echo \"ATTEMPT chown-{node} rc=$?\"\n\
             touch -d 2001-01-01 /dev/{node} 2>/dev/null; echo \"ATTEMPT utime-{node} rc=$?\"\n"
        ));
    }
    for mask in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sysrq-trigger",
    ] {
        script.push_str(&format!(
            "if [ -e {mask} ]; then chmod 666 {mask} 2>/dev/null; echo \"ATTEMPT chmod-{mask} rc=$?\"; \
             touch -d 2001-01-01 {mask} 2>/dev/null; echo \"ATTEMPT utime-{mask} rc=$?\"; fi\n"
        ));
    }
    let out = sh(&[], &script);
    let attempts = out.stdout.matches("ATTEMPT ").count();
    assert!(attempts >= nodes.len() * 3 + 4, "{out:#?}");
    all_refused(&out, attempts);
    for (node, was) in nodes.iter().zip(before) {
        let now = std::fs::metadata(format!("/dev/{node}")).unwrap();
        assert_eq!(now.mode(), was.mode(), "/dev/{node}'s mode changed");
        assert_eq!(
            (now.uid(), now.gid()),
            (was.uid(), was.gid()),
            "/dev/{node}"
        );
        assert_eq!(now.mtime(), was.mtime(), "/dev/{node}'s times changed");
    }
}

/// A read-only bind is read-only to files, not to sockets and FIFOs: with
/// host root's rights on them (an idmapped bind), the sandbox would connect
/// to root-only daemons (a Docker socket is host root). It gets what an
/// unprivileged host uid gets.
#[test]
fn a_read_only_bind_gives_no_more_than_an_unprivileged_user_gets() {
    require_root!();
    let dir = scratch_on_root_fs("sockets");
    let socket = dir.0.join("root-only.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let fifo = dir.0.join("root-only.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let secret = dir.0.join("root-only.txt");
    std::fs::write(&secret, "host root's\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = sh(
        &["--ro-bind", &format!("{}:/b", dir.0.display())],
        r#"
python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect("/b/root-only.sock")' 2>/dev/null; echo "ATTEMPT connect rc=$?"
echo escaped 2>/dev/null > /b/root-only.fifo; echo "ATTEMPT fifo rc=$?"
cat /b/root-only.txt 2>/dev/null; echo "ATTEMPT read rc=$?"
"#,
    );
    all_refused(&out, 3);
    assert!(
        listener.accept().is_err(),
        "the sandbox connected to a root-only socket"
    );
    let mut got = Vec::new();
    let _ = reader.read_to_end(&mut got);
    assert!(got.is_empty(), "the sandbox wrote to a root-only FIFO");
}

/// A state dir with a CA under `parent`, its directories opened to
/// everyone (as an operator might); the key stays 0600, as tollgate
/// refuses a CA key others may read.
fn open_state_dir(parent: &Path) -> PathBuf {
    let state = parent.join("state");
    tool_ok(
        Command::new(BIN)
            .arg("--state-dir")
            .arg(&state)
            .args(["ca", "init"]),
    );
    tool_ok(
        Command::new("find")
            .arg(&state)
            .args(["-type", "d", "-exec", "chmod", "a+rx", "{}", "+"]),
    );
    state
}

/// `tollgate --state-dir STATE exec` with `--ro-bind BIND`, running `sh -c
/// script`.
fn exec_with_state(state: &Path, bind: &str, script: &str) -> Done {
    exec(
        Command::new(BIN)
            .arg("--state-dir")
            .arg(state)
            .args([
                "exec",
                "--policy",
                "off",
                "--ro-bind",
                bind,
                "--",
                "sh",
                "-c",
                script,
            ])
            .env("NO_COLOR", "1"),
    )
}

/// The state dir (and its CA key) is hidden wherever a bind shows it, not
/// only at its own path.
#[test]
fn the_state_dir_is_hidden_inside_a_bind_of_a_parent() {
    require_root!();
    let parent = scratch_on_root_fs("state-parent");
    let state = open_state_dir(&parent.0);
    let out = exec_with_state(
        &state,
        &format!("{}:/x", parent.0.display()),
        "cat /x/state/certs/ca.key 2>/dev/null; echo \"ATTEMPT key rc=$?\"; \
         echo \"LISTED $(ls -A /x/state 2>/dev/null | wc -l)\"",
    );
    assert!(!out.stdout.contains("PRIVATE KEY"), "{out:#?}");
    all_refused(&out, 1);
    assert_eq!(out.expect_value("LISTED"), "0", "{out:#?}");
}

// ---------------------------------------------------------------------------
// Mount flags

fn mount_options(out: &Done, point: &str) -> String {
    out.stdout
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(1) == Some(&point)).then(|| fields[3].to_owned())
        })
        .unwrap_or_else(|| panic!("no mount at {point}: {out:#?}"))
}

/// setuid files and device nodes mean nothing on the root or a writable
/// bind (a setuid file the sandbox leaves in a bind stays inert inside).
#[test]
fn the_root_and_every_bind_are_nosuid_and_nodev() {
    require_root!();
    let rw = Scratch::new("flags-rw");
    owned_by_sandbox_root(&rw.0);
    let ro = Scratch::new("flags-ro");
    let out = ok(sh(
        &[
            "--bind",
            &format!("{}:/rw", rw.0.display()),
            "--ro-bind",
            &format!("{}:/ro", ro.0.display()),
        ],
        "cat /proc/self/mounts",
    ));
    for point in ["/", "/rw", "/ro", "/tmp", "/dev/shm"] {
        let options = mount_options(&out, point);
        for flag in ["nosuid", "nodev"] {
            assert!(
                options.split(',').any(|o| o == flag),
                "{point} is mounted without {flag}: {options}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Ids

/// From the host, the command and the sandbox's PID 1 are the
/// unprivileged uid root inside maps to.
#[test]
fn sandbox_processes_show_as_the_mapped_uid_on_the_host() {
    require_root!();
    let (uid, _) = sandbox_root();
    assert!(uid >= 65536, "root inside maps to host uid {uid}");
    // A duration no other process on the host sleeps for.
    let seconds = format!("29.{}", std::process::id());
    let running = start_exec(&mut exec_command(&[], &["sleep", &seconds]));
    let command = poll(Duration::from_secs(10), || {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                (cmdline == format!("sleep\0{seconds}\0").into_bytes())
                    .then(|| entry.file_name().to_string_lossy().into_owned())
            })
    })
    .expect("the sandboxed command did not start");
    let status_of = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |status: &str, name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let command_status = status_of(&command);
    let pid1 = field(&command_status, "PPid").remove(0);
    let pid1_status = status_of(&pid1);
    // The stage (PID 1's parent, in the host's PID namespace) waits as
    // root, with no capability left.
    let stage_status = status_of(&field(&pid1_status, "PPid").remove(0));
    let _ = running.kill();
    assert_eq!(
        field(&stage_status, "CapEff"),
        ["0000000000000000"],
        "{stage_status}"
    );
    assert_eq!(
        field(&stage_status, "CapBnd"),
        ["0000000000000000"],
        "{stage_status}"
    );
    assert_eq!(field(&stage_status, "NoNewPrivs"), ["1"], "{stage_status}");
    for (who, status) in [("command", &command_status), ("PID 1", &pid1_status)] {
        for ids in ["Uid", "Gid"] {
            assert_eq!(
                field(status, ids),
                vec![uid.to_string(); 4],
                "the sandbox's {who} on the host: {status}"
            );
        }
    }
}

/// PID 1 has given up everything before the command's first instruction:
/// the command reads PID 1's status as its very first act.
#[test]
fn pid_1_has_no_privilege_left_when_the_command_starts() {
    require_root!();
    for _ in 0..5 {
        let out = ok(exec(&mut exec_command(&[], &["cat", "/proc/1/status"])));
        let field = |name: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap_or_else(|| panic!("no {name}: {out:#?}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        // Root inside is the mapped uid: PID 1 still host root would show
        // as the overflow uid.
        assert_eq!(field("Uid"), "0 0 0 0", "{out:#?}");
        assert_eq!(field("CapPrm"), "0000000000000000", "{out:#?}");
        assert_eq!(field("CapEff"), "0000000000000000", "{out:#?}");
        assert_eq!(field("CapBnd"), "0000000000000000", "{out:#?}");
        assert_eq!(field("NoNewPrivs"), "1", "{out:#?}");
        assert_eq!(field("Seccomp"), "2", "{out:#?}");
    }
}

// ---------------------------------------------------------------------------
// Limits

/// A fork bomb stops at `--pids`, and the host can still start processes
/// while it runs.
#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_the_host_still_forks() {
    require_root!();
    let script = r#"
import os, time
n = 0
for _ in range(500):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    n += 1
print("STARTED", n, flush=True)
"#;
    let running = start_exec(&mut exec_command(
        &["--pids", "64"],
        &["python3", "-c", script],
    ));
    std::thread::sleep(Duration::from_millis(300));
    let host = tool(Command::new("sh").args(["-c", "echo host-forks"]));
    assert_eq!(host.stdout.trim(), "host-forks");
    let out = running.finish(EXEC_LIMIT);
    let started: usize = out.expect_value("STARTED").parse().unwrap();
    assert!(
        (40..64).contains(&started),
        "{started} processes started under --pids 64: {out:#?}"
    );
}

/// Filling /tmp (and /dev/shm, and the root's writable layer) stops at
/// `--tmpfs-size`.
#[test]
fn filling_tmp_stops_at_its_size() {
    require_root!();
    let out = ok(sh(
        &["--tmpfs-size", "16M"],
        r#"
for dir in /tmp /dev/shm /var; do
  dd if=/dev/zero of=$dir/fill bs=1M count=64 2>/dev/null
  echo "FILLED$dir $(( $(stat -c %s $dir/fill) / 1048576 ))"
  rm -f $dir/fill
done
"#,
    ));
    for dir in ["/tmp", "/dev/shm", "/var"] {
        let mib: u64 = out.expect_value(&format!("FILLED{dir}")).parse().unwrap();
        assert!(mib <= 16, "{dir} took {mib} MiB under --tmpfs-size 16M");
    }
}

/// Socket buffers count against `--memory`: loopback connections inside
/// cannot fill the host's TCP memory (cgroup v1 does not charge them
/// unless told to).
#[test]
fn socket_buffers_count_against_the_memory_limit() {
    require_root!();
    let script = r#"
import socket
total = 0
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(64)
keep = []
for _ in range(40):
    c = socket.create_connection(server.getsockname()); s, _ = server.accept()
    c.setblocking(False); keep += [c, s]
    chunk = b"x" * 65536
    while True:
        try:
            total += c.send(chunk)
        except (BlockingIOError, OSError):
            break
print("QUEUED", total // 1048576, flush=True)
"#;
    let out = exec(&mut exec_command(
        &["--memory", "64M"],
        &["python3", "-c", script],
    ));
    // cgroup v2 charges socket memory to the cgroup, and may OOM-kill.
    if out.code == Some(137) {
        return;
    }
    assert_eq!(out.code, Some(0), "{out:#?}");
    let mib: u64 = out.expect_value("QUEUED").parse().unwrap();
    assert!(mib < 96, "{mib} MiB queued in sockets under --memory 64M");
}

/// One sandbox cannot take every pty of the host's pool.
#[test]
fn one_sandbox_cannot_take_every_pty() {
    require_root!();
    let out = ok(exec(&mut exec_command(
        &[],
        &[
            "python3",
            "-c",
            "import os\nn = 0\nkeep = []\nwhile n < 600:\n    try: keep.append(os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY))\n    except OSError: break\n    n += 1\nprint('PTYS', n)",
        ],
    )));
    let ptys: usize = out.expect_value("PTYS").parse().unwrap();
    // devpts max=128 (dev.rs): the 129th open fails.
    assert_eq!(ptys, 128, "{ptys} ptys opened");
}

// ---------------------------------------------------------------------------
// Run directories

/// Another user cannot stop a sandbox from starting by planting the
/// directory (or a symlink) it would use.
#[test]
fn a_planted_run_directory_does_not_stop_a_sandbox() {
    require_root!();
    let tmp = std::env::temp_dir();
    let line = format!(
        "mkdir -p {t}/tollgate-run-$$-0 && ln -sfn /etc {t}/tollgate-run-$$-1 && echo \"PID $$\" && \
         exec env TOLLGATE_STATE_DIR={NO_STATE} {BIN} exec --policy off -- echo started",
        t = tmp.display()
    );
    let out = tool(Command::new("sh").args(["-c", &line]));
    let pid = out.expect_value("PID");
    let _planted = [0, 1].map(|n| RemoveOnDrop(tmp.join(format!("tollgate-run-{pid}-{n}"))));
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("started"), "{out:#?}");
    assert!(Path::new("/etc/passwd").exists());
}

// ---------------------------------------------------------------------------
// Ownership across phases and runs

/// Setup runs as root inside and installs as `apt-get` would, in /usr/local
/// and /etc; the agent sees those files root's, on a fresh setup and on a
/// cache hit.
#[test]
fn setup_writes_are_roots_inside_on_a_fresh_run_and_on_a_cache_hit() {
    require_root!();
    let world = RunWorld::new("ownership");
    let env = world.env(&env_yaml(
        "ownership",
        r#"
mkdir -p /usr/local/tg-wall && echo tool > /usr/local/tg-wall/tool
echo setting > /etc/tg-wall.conf
"#,
        "",
        "",
    ));
    let agent = r#"stat -c 'OWNER%n %u:%g' /usr/local/tg-wall/tool /etc/tg-wall.conf"#;
    for status in ["miss", "hit"] {
        let run = world.run_sh(&env, agent);
        run.expect_code(0);
        assert_eq!(run.status(), status, "{run:#?}");
        for (path, owner) in [
            ("/usr/local/tg-wall/tool", "0:0"),
            ("/etc/tg-wall.conf", "0:0"),
        ] {
            assert_eq!(
                run.expect_value("agent", &format!("OWNER{path}")),
                owner,
                "{status}: {run:#?}"
            );
        }
    }
    assert!(!Path::new("/usr/local/tg-wall").exists());
    assert!(!Path::new("/etc/tg-wall.conf").exists());
}

/// A snapshot whose mount points setup replaced (a symlink where tollgate
/// mounts the mirror) is never published: the run fails saying why, and
/// the next run sets up again rather than failing on a poisoned cache.
#[test]
fn setup_that_breaks_tollgates_mount_points_is_not_cached() {
    require_root!();
    let world = RunWorld::new("poison");
    let env = world.env(&env_yaml(
        "poison",
        "rm -rf /run/tollgate; ln -s /tmp /run/tollgate",
        "",
        "",
    ));
    for _ in 0..2 {
        let run = world.run_sh(&env, "true");
        assert_ne!(run.code(), Some(0), "{run:#?}");
        run.assert_says("/run/tollgate");
        assert!(world.snapshot_keys("poison").is_empty(), "{run:#?}");
    }
}

/// A run killed with SIGKILL leaves its run directory, cgroups and
/// scratch directories; `cache gc` removes them.
#[test]
fn cache_gc_removes_what_a_killed_run_left() {
    require_root!();
    let world = RunWorld::new("killed");
    let env = world.env(&env_yaml("killed", "true", "", ""));
    let started = world.start(
        &env,
        &Spec {
            agent: &["sh", "-c", "echo AGENT_UP; sleep 60"],
            ..Spec::default()
        },
    );
    let pid = started.pid();
    let up = eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(started.out.join("agent.log"))
            .is_ok_and(|log| log.contains("AGENT_UP"))
    });
    assert!(up, "the agent did not start");
    let killed = started.running.kill();
    assert_eq!(killed.code, None, "{killed:#?}");
    assert!(eventually(Duration::from_secs(5), || !world
        .run_dirs()
        .is_empty()
        || run_dirs_of(pid).is_empty()));
    // gc leaves what looks abandoned alone for a minute (its owner may be
    // in a PID namespace we cannot see into): let that minute pass.
    for dir in cgroups_of(pid).iter().chain(&run_dirs_of(pid)) {
        age(dir);
    }
    world.cache_gc();
    assert!(world.run_dirs().is_empty(), "{:?}", world.run_dirs());
    assert!(run_dirs_of(pid).is_empty(), "{:?}", run_dirs_of(pid));
    assert!(cgroups_of(pid).is_empty(), "{:?}", cgroups_of(pid));
}

// ---------------------------------------------------------------------------
// Rootless

/// The value after `KEY ` on a time-stamped phase line of `tollgate run`.
fn stamped_value(out: &Done, key: &str) -> String {
    out.stdout
        .lines()
        .filter_map(strip_stamp)
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no {key}: {out:#?}"))
        .trim()
        .to_owned()
}

fn chown_tree(dir: &Path, user: &TestUser) {
    tool_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(dir),
    );
}

/// A user runs `tollgate run` rootless: setup, cache, agent and diff work,
/// and root inside is that user. (It writes where the host lets that user
/// write: overlayfs cannot copy up a directory whose owner has no id
/// inside, so host root's /usr/local or /var/tmp stay read-only.)
#[test]
fn rootless_run_sets_up_caches_and_diffs_as_the_user() {
    require_root!();
    let user = TestUser::ensure();
    let world = RunWorld::new("rootless");
    let env = world.env(&env_yaml("rootless", "echo setup-made > made.txt", "", ""));
    chown_tree(&world.dir.0, user);
    let agent = r#"echo "UIDMAP $(head -1 /proc/self/uid_map)"; echo "OWNER $(stat -c %u made.txt)"; cat made.txt; echo agent-change >> README.md"#;
    for (n, status) in ["miss", "hit"].iter().enumerate() {
        let out = world.dir.path(&format!("rootless-out-{n}"));
        let done = tool(
            user.command(BIN)
                .arg("--state-dir")
                .arg(&world.state)
                .arg("run")
                .arg(&env)
                .arg("--repo")
                .arg(&world.repo.path)
                .arg("--out")
                .arg(&out)
                .args(["--", "sh", "-c", agent]),
        );
        assert_eq!(done.code, Some(0), "{status}: {done:#?}");
        assert!(
            done.stderr.contains(&format!("cache: {status}")),
            "{done:#?}"
        );
        assert!(done.stdout.contains("setup-made"), "{done:#?}");
        let map = stamped_value(&done, "UIDMAP");
        let fields: Vec<&str> = map.split_whitespace().take(2).collect();
        assert_eq!(fields, ["0", &user.uid.to_string()], "{map}");
        assert_eq!(stamped_value(&done, "OWNER"), "0", "{done:#?}");
        let patch = std::fs::read_to_string(out.join("diff.patch")).unwrap();
        assert!(patch.contains("+agent-change"), "{patch}");
    }
}

/// Rootless, with a CA in the state dir: the CA bundle inside cannot be
/// replaced (host root's /etc is nobody's), and exec still runs.
#[test]
fn rootless_exec_with_a_ca_in_the_state_dir_trusts_it() {
    require_root!();
    let user = TestUser::ensure();
    let dir = Scratch::new("rootless-ca");
    chown_tree(&dir.0, user);
    let state = dir.path("state");
    let init = tool(
        user.command(BIN)
            .arg("--state-dir")
            .arg(&state)
            .args(["ca", "init"]),
    );
    assert_eq!(init.code, Some(0), "{init:#?}");
    let pem = std::fs::read_to_string(state.join("certs/ca.crt")).unwrap();
    let first_line = pem.lines().nth(1).unwrap().to_owned();
    let done = tool(
        user.command(BIN)
            .arg("--state-dir")
            .arg(&state)
            .args(["exec", "--policy", "off", "--", "sh", "-c"])
            .arg(format!(
                "grep -c '{first_line}' /etc/ssl/certs/ca-certificates.crt | sed 's/^/FOUND /'"
            )),
    );
    assert_eq!(done.code, Some(0), "{done:#?}");
    assert_eq!(done.expect_value("FOUND"), "1", "{done:#?}");
}

/// What a phase prints reaches the operator's terminal with its control
/// characters escaped (no clipboard write, no overwritten status line);
/// the log keeps the bytes.
#[test]
fn phase_output_reaches_the_terminal_with_control_characters_escaped() {
    require_root!();
    let world = RunWorld::new("escapes");
    let env = world.env(&env_yaml("escapes", "true", "", ""));
    let run = world.run_sh(
        &env,
        r"printf '\033]52;c;cHduZWQ=\007\033[2K\rtollgate: agent: exit 0 (forged)\n'",
    );
    run.expect_code(0);
    let shown = run.phase_text("agent").join("\n");
    assert!(
        !run.stdout().contains(['\x1b', '\x07', '\r']),
        "{:?}",
        run.stdout()
    );
    assert!(
        shown.contains(r"\x1b]52;c;cHduZWQ=\x07\x1b[2K\rtollgate: agent: exit 0 (forged)"),
        "{shown}"
    );
    assert!(run.expect_file("agent.log").contains("\x1b]52;c;"));
}

// ---------------------------------------------------------------------------
// Round two: what is mounted below a bound directory

/// A tmpfs mounted on the host at `dir/name` (unmounted on drop).
struct HostMount(PathBuf);

impl HostMount {
    fn tmpfs(dir: &Path, name: &str) -> HostMount {
        let point = dir.join(name);
        std::fs::create_dir_all(&point).unwrap();
        tool_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m", "tollgate-test"])
                .arg(&point),
        );
        HostMount(point)
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `--ro-bind` and `--bind` carry what is mounted below their directory,
/// and every mount of that tree is read-only (for `--ro-bind`), nosuid and
/// nodev: the nested mount is no way to write or to open a device.
#[test]
fn mounts_below_a_bind_are_as_locked_down_as_the_bind() {
    require_root!();
    let dir = scratch_on_root_fs("nested");
    let nested = HostMount::tmpfs(&dir.0, "nested");
    std::fs::write(nested.0.join("file"), "host data\n").unwrap();
    mknod(&nested.0.join("null"), 0o666, 1, 3);
    std::fs::set_permissions(&nested.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.0.display();
    let out = sh(
        &[
            "--ro-bind",
            &format!("{d}:/ro"),
            "--bind",
            &format!("{d}:/rw"),
        ],
        r#"
echo x 2>/dev/null >> /ro/nested/file; echo "ATTEMPT ro-nested-write rc=$?"
echo x 2>/dev/null > /ro/nested/new; echo "ATTEMPT ro-nested-create rc=$?"
echo x 2>/dev/null > /ro/nested/null; echo "ATTEMPT ro-nested-device rc=$?"
echo x 2>/dev/null > /rw/nested/null; echo "ATTEMPT rw-nested-device rc=$?"
echo "SEEN $(cat /ro/nested/file)"
"#,
    );
    all_refused(&out, 4);
    assert_eq!(out.expect_value("SEEN"), "host data", "{out:#?}");
    assert_eq!(
        std::fs::read_to_string(nested.0.join("file")).unwrap(),
        "host data\n"
    );
    assert!(!nested.0.join("new").exists());
}

/// A bind that would show the host's kernel interfaces (/proc, /sys,
/// /dev, cgroups) is refused with one line, before anything runs.
#[test]
fn binds_of_the_hosts_kernel_interfaces_are_refused() {
    require_root!();
    let dir = scratch_on_root_fs("kernelfs");
    std::fs::create_dir(dir.0.join("proc")).unwrap();
    tool_ok(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(dir.0.join("proc")),
    );
    let _unmount = HostMount(dir.0.join("proc"));
    for bind in [
        "/proc:/x".to_owned(),
        "/sys:/x".to_owned(),
        "/dev:/x".to_owned(),
        "/:/host".to_owned(),
        format!("{}:/x", dir.0.display()),
    ] {
        let out = exec(&mut exec_command(&["--ro-bind", &bind], &["true"]));
        assert_eq!(out.code, Some(2), "{bind}: {out:#?}");
        assert!(
            out.stderr.contains("kernel") && out.stderr.lines().count() == 1,
            "{bind}: {out:#?}"
        );
    }
}

/// The state dir stays hidden when the host shows it under a second name
/// too (a bind mount of a parent elsewhere), and a bind shows that name.
#[test]
fn the_state_dir_is_hidden_behind_a_second_mount_of_it() {
    require_root!();
    let parent = scratch_on_root_fs("state-alias");
    let state = open_state_dir(&parent.0);
    let alias = scratch_on_root_fs("state-alias-view");
    tool_ok(
        Command::new("mount")
            .arg("--bind")
            .arg(&parent.0)
            .arg(&alias.0),
    );
    let _unmount = HostMount(alias.0.clone());
    let out = exec_with_state(
        &state,
        &format!("{}:/x", alias.0.display()),
        "echo \"LISTED $(ls -A /x/state 2>/dev/null | wc -l)\"",
    );
    assert_eq!(out.expect_value("LISTED"), "0", "{out:#?}");
}

/// Rootless, a top-level directory of the base with a mount below it (a
/// home directory mounted on its own) is split entry by entry, as one
/// overlay of the base would show it: what is mounted below is left out,
/// the directory's own files are there, read-only, and a unix socket in
/// it cannot be reached (a bind of the directory passed the real socket
/// on: a user's docker socket is host root). Nothing reaches the host.
#[test]
fn rootless_a_directory_with_mounts_below_shows_no_mount_and_no_socket() {
    require_root!();
    let user = TestUser::ensure();
    let top = RemoveOnDrop(PathBuf::from(format!("/tollgate-wall-{}", unique())));
    std::fs::create_dir(&top.0).unwrap();
    std::fs::set_permissions(&top.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = HostMount::tmpfs(&top.0, "home");
    let rc = home.0.join("bashrc");
    std::fs::write(&rc, "# the user's own\n").unwrap();
    chown_tree(&home.0, user);
    std::fs::write(top.0.join("plain.txt"), "PLAIN_VISIBLE\n").unwrap();
    // A file mounted over one (as a namespace handle is in /run/netns).
    let bound_source = top.0.join("source.txt");
    std::fs::write(&bound_source, "FILE_MOUNT_CONTENT\n").unwrap();
    let bound = top.0.join("bound.txt");
    std::fs::write(&bound, "").unwrap();
    tool_ok(
        Command::new("mount")
            .arg("--bind")
            .arg(&bound_source)
            .arg(&bound),
    );
    let _bound = HostMount(bound.clone());
    std::fs::remove_file(&bound_source).unwrap();
    let socket = top.0.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let script = format!(
        "cat {top}/plain.txt {top}/bound.txt; \
         if test -e {rc}; then echo RC_SHOWN; else echo RC_HIDDEN; fi; \
         echo evil 2>/dev/null >> {rc}; \
         python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print(\"SOCKET_REACHED\")' {socket} 2>/dev/null || echo SOCKET_REFUSED",
        top = top.0.display(),
        rc = rc.display(),
        socket = socket.display(),
    );
    let done = tool(
        user.command(BIN)
            .args(["exec", "--policy", "off", "--", "sh", "-c"])
            .arg(&script)
            .env("TOLLGATE_STATE_DIR", NO_STATE),
    );
    assert!(done.stdout.contains("PLAIN_VISIBLE"), "{done:#?}");
    assert!(!done.stdout.contains("FILE_MOUNT_CONTENT"), "{done:#?}");
    assert!(done.stdout.contains("RC_HIDDEN"), "{done:#?}");
    assert!(done.stdout.contains("SOCKET_REFUSED"), "{done:#?}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host's socket got a connection from the sandbox"
    );
    assert_eq!(std::fs::read_to_string(&rc).unwrap(), "# the user's own\n");
}

/// The host side holds at most a bounded piece of a phase's output line:
/// a line without end arrives in pieces.
#[test]
fn an_endless_output_line_arrives_in_pieces() {
    require_root!();
    let world = RunWorld::new("long-line");
    let env = world.env(&env_yaml("long-line", "true", "", ""));
    let run = world.run_sh(&env, "head -c 3000000 /dev/zero | tr '\\0' x");
    run.expect_code(0);
    let lines = run.phase_text("agent");
    let longest = lines.iter().map(String::len).max().unwrap_or(0);
    assert!(
        lines.len() >= 3 && longest <= 1 << 20,
        "{} lines, longest {longest}",
        lines.len()
    );
    assert_eq!(lines.iter().map(String::len).sum::<usize>(), 3_000_000);
}
