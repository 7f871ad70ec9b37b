use super::hierarchy::{host_leaf_name, parse_mountinfo, without_host_leaf};
use super::v2::enable_controllers;
use super::*;
use crate::mountinfo::unescape_mountinfo;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::Instant;

const CHILD_PROCS: &str = "TOLLGATE_CGROUP_TEST_PROCS";
const CHILD_SCRIPT: &str = "TOLLGATE_CGROUP_TEST_SCRIPT";
const CHILD_BASE: &str = "TOLLGATE_CGROUP_TEST_BASE";
const CHILD_CONTROLLER: &str = "TOLLGATE_CGROUP_TEST_CONTROLLER";

fn is_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIP: needs root: {test} creates real cgroups");
    }
    root
}

/// Not a test: the child that `spawn_in` starts, a fresh process of
/// this test binary that joins the cgroups with [`join`], exactly as
/// the sandbox's init does, then becomes `sh -c SCRIPT`.
#[test]
#[ignore = "helper: runs only as the child process of other tests"]
fn joined_child() {
    let (Some(procs), Ok(script)) = (std::env::var_os(CHILD_PROCS), std::env::var(CHILD_SCRIPT))
    else {
        return;
    };
    let procs: Vec<PathBuf> = std::env::split_paths(&procs).collect();
    join(&procs).expect("join the phase's cgroups");
    let error = Command::new("/bin/sh").arg("-c").arg(script).exec();
    panic!("exec /bin/sh: {error}");
}

/// This test binary, to run only `helper` (an ignored test) in a child.
fn helper_command(helper: &str) -> Command {
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let helper = format!("{module}::{helper}");
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args([
        "--exact",
        &helper,
        "--ignored",
        "--test-threads=1",
        "--nocapture",
    ]);
    command
}

fn spawn_in(cgroup: &PhaseCgroup, script: &str) -> Child {
    helper_command("joined_child")
        .env(
            CHILD_PROCS,
            std::env::join_paths(cgroup.join_files()).unwrap(),
        )
        .env(CHILD_SCRIPT, script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Not a test: a child that joins the v2 cgroup `CHILD_BASE`, as a
/// tollgate started there would be, enables `CHILD_CONTROLLER` there
/// for children, and prints the outcome.
#[test]
#[ignore = "helper: runs only as the child process of other tests"]
fn v2_enabling_child() {
    let (Some(base), Ok(controller)) = (
        std::env::var_os(CHILD_BASE),
        std::env::var(CHILD_CONTROLLER),
    ) else {
        return;
    };
    let base = PathBuf::from(base);
    join(&[base.join("cgroup.procs")]).expect("join the base cgroup");
    match enable_controllers(&base, &[controller.as_str()]) {
        Ok(()) => println!("RESULT ok"),
        Err(why) => println!("RESULT {why}"),
    }
}

/// Runs `v2_enabling_child` in `base`: its RESULT, if it printed one.
fn enable_from_child(base: &Path, controller: &str) -> Option<String> {
    let output = helper_command("v2_enabling_child")
        .env(CHILD_BASE, base)
        .env(CHILD_CONTROLLER, controller)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    // libtest may print the test's name on the same line first.
    let result = stdout.lines().find_map(|l| l.split_once("RESULT "));
    result.map(|(_, result)| result.to_owned())
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("child still running after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn process_count(cgroup: &PhaseCgroup) -> usize {
    cgroup
        .dirs
        .iter()
        .map(|dir| dir.pids().unwrap().len())
        .max()
        .unwrap_or(0)
}

fn enforced(enforcement: &Option<Enforcement>) -> bool {
    matches!(
        enforcement,
        Some(Enforcement::CgroupV1 | Enforcement::CgroupV2)
    )
}

/// Removes a directory made by hand in a test, even if it fails.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn no_limits_create_nothing() {
    let (cgroup, report) = PhaseCgroup::create("t-none", &Limits::default()).unwrap();
    assert!(cgroup.join_files().is_empty());
    assert_eq!((report.memory.clone(), report.pids.clone()), (None, None));
    assert!(report.warnings().is_empty());
    let host = Hierarchies::detect().unwrap();
    for parent in [host.v2, host.v1_memory, host.v1_pids]
        .into_iter()
        .flatten()
    {
        assert!(!parent.join(phase_dir_name("t-none")).exists());
    }
}

#[test]
fn pids_limit_refuses_forks_beyond_it() {
    if !is_root("pids_limit_refuses_forks_beyond_it") {
        return;
    }
    let limits = Limits {
        memory: None,
        pids: Some(5),
    };
    let (cgroup, report) = PhaseCgroup::create("t-pids", &limits).unwrap();
    assert!(enforced(&report.pids), "{report:?}");
    assert!(report.warnings().is_empty(), "{:?}", report.warnings());
    // sh itself is one of the 5: at most 4 of the 8 sleeps can start.
    // (dash gives up on a failed fork; bash retries for a while.)
    let script = "for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; wait";
    let mut child = spawn_in(&cgroup, script);
    let dir = cgroup
        .dirs
        .iter()
        .find(|d| d.has(Controller::Pids))
        .unwrap();
    let refused = || read_keyed(&dir.path.join("pids.events"), "max").unwrap();
    wait_until("the kernel refuses a fork", Duration::from_secs(20), || {
        refused() >= 1
    });
    let running = dir.pids().unwrap().len();
    assert!(
        (1..=5).contains(&running),
        "{running} processes under pids.max 5"
    );
    drop(cgroup);
    assert!(!wait_exit(&mut child, Duration::from_secs(5)).success());
}

#[test]
fn memory_limit_oom_kills_and_is_reported() {
    if !is_root("memory_limit_oom_kills_and_is_reported") {
        return;
    }
    let limit = 32 << 20;
    let limits = Limits {
        memory: Some(limit),
        pids: None,
    };
    let (cgroup, report) = PhaseCgroup::create("t-mem", &limits).unwrap();
    assert!(enforced(&report.memory), "{report:?}");
    assert!(!cgroup.oom_killed());
    // tail keeps the last 10 lines; /dev/zero has none, so it keeps all.
    let mut child = spawn_in(&cgroup, "head -c 200M /dev/zero | tail >/dev/null");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(128 + 9), "tail should die of SIGKILL");
    assert!(cgroup.oom_killed());
    let peak = cgroup.memory_peak().expect("kernel reports peak memory");
    assert!(
        peak > limit / 2 && peak <= limit,
        "peak {peak} vs limit {limit}"
    );
}

#[test]
fn within_the_memory_limit_nothing_is_oom_killed() {
    if !is_root("within_the_memory_limit_nothing_is_oom_killed") {
        return;
    }
    let limits = Limits {
        memory: Some(64 << 20),
        pids: None,
    };
    let (cgroup, _) = PhaseCgroup::create("t-memok", &limits).unwrap();
    let mut child = spawn_in(&cgroup, "head -c 8M /dev/zero | tail >/dev/null");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    assert!(!cgroup.oom_killed());
    assert!(cgroup.memory_peak().is_some_and(|peak| peak >= 8 << 20));
}

#[test]
fn kill_all_empties_the_cgroups() {
    if !is_root("kill_all_empties_the_cgroups") {
        return;
    }
    let limits = Limits {
        memory: Some(256 << 20),
        pids: Some(64),
    };
    let (cgroup, _) = PhaseCgroup::create("t-kill", &limits).unwrap();
    let mut child = spawn_in(&cgroup, "sleep 60 & sleep 60 & wait");
    wait_until("sh and 2 sleeps run", Duration::from_secs(10), || {
        process_count(&cgroup) == 3
    });
    cgroup.kill_all();
    // Not yet reaped: a zombie must not count as a member.
    for dir in &cgroup.dirs {
        assert_eq!(dir.pids().unwrap(), vec![], "{}", dir.path.display());
    }
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(5)).signal(),
        Some(9)
    );
}

#[test]
fn drop_kills_and_removes_the_directories() {
    if !is_root("drop_kills_and_removes_the_directories") {
        return;
    }
    let limits = Limits {
        memory: Some(256 << 20),
        pids: Some(64),
    };
    let (cgroup, _) = PhaseCgroup::create("t-drop", &limits).unwrap();
    let dirs: Vec<PathBuf> = cgroup.dirs.iter().map(|d| d.path.clone()).collect();
    assert!(dirs.iter().all(|d| d.is_dir()));
    let mut child = spawn_in(&cgroup, "exec sleep 60");
    wait_until("sleep runs", Duration::from_secs(10), || {
        process_count(&cgroup) == 1
    });
    drop(cgroup);
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(5)).signal(),
        Some(9)
    );
}

#[test]
fn one_procs_file_per_hierarchy() {
    if !is_root("one_procs_file_per_hierarchy") {
        return;
    }
    let limits = Limits {
        memory: Some(1 << 30),
        pids: Some(100),
    };
    let (cgroup, report) = PhaseCgroup::create("t-files", &limits).unwrap();
    let all = [&report.memory, &report.pids];
    let v2 = all.iter().any(|e| **e == Some(Enforcement::CgroupV2));
    let v1 = all
        .iter()
        .filter(|e| ***e == Some(Enforcement::CgroupV1))
        .count();
    let files = cgroup.join_files();
    assert_eq!(files.len(), usize::from(v2) + v1, "{report:?}");
    assert!(files
        .iter()
        .all(|f| f.is_file() && (f.ends_with("cgroup.procs") || f.ends_with("tasks"))));
    let dir_name = phase_dir_name("t-files");
    assert!(files
        .iter()
        .all(|f| f.parent().is_some_and(|d| d.ends_with(&dir_name))));
    eprintln!(
        "this host: memory {:?}, pids {:?}, {files:?}",
        report.memory, report.pids
    );
}

#[test]
fn limits_are_written() {
    if !is_root("limits_are_written") {
        return;
    }
    let limits = Limits {
        memory: Some(48 << 20),
        pids: Some(7),
    };
    let (cgroup, _) = PhaseCgroup::create("t-write", &limits).unwrap();
    for dir in &cgroup.dirs {
        let read = |file: &str| read_number(&dir.path.join(file));
        if dir.has(Controller::Pids) {
            assert_eq!(read("pids.max"), Some(7));
        }
        match (dir.has(Controller::Memory), dir.version) {
            (false, _) => {}
            (true, Version::V2) => {
                assert_eq!(read("memory.max"), Some(48 << 20));
                let swap = dir.path.join("memory.swap.max");
                assert!(!swap.exists() || read("memory.swap.max") == Some(0));
            }
            (true, Version::V1) => {
                assert_eq!(read("memory.limit_in_bytes"), Some(48 << 20));
                let memsw = dir.path.join("memory.memsw.limit_in_bytes");
                assert!(!memsw.exists() || read("memory.memsw.limit_in_bytes") == Some(48 << 20));
                let tcp = dir.path.join("memory.kmem.tcp.limit_in_bytes");
                assert!(!tcp.exists() || read("memory.kmem.tcp.limit_in_bytes") == Some(48 << 20));
            }
        }
    }
}

#[test]
fn phase_cgroups_nest_under_our_own() {
    if !is_root("phase_cgroups_nest_under_our_own") {
        return;
    }
    let host = Hierarchies::detect().unwrap();
    let limits = Limits {
        memory: Some(1 << 30),
        pids: Some(100),
    };
    let (cgroup, _) = PhaseCgroup::create("t-nest", &limits).unwrap();
    for dir in &cgroup.dirs {
        let parent = dir.path.parent().unwrap();
        let own = match (dir.version, dir.controllers.as_slice()) {
            (Version::V2, _) => host.v2.as_deref(),
            (Version::V1, [Controller::Memory]) => host.v1_memory.as_deref(),
            (Version::V1, _) => host.v1_pids.as_deref(),
        };
        assert_eq!(Some(parent), own, "{}", dir.path.display());
    }
}

#[test]
fn cgroup_kill_empties_a_v2_cgroup() {
    if !is_root("cgroup_kill_empties_a_v2_cgroup") {
        return;
    }
    let Some(base) = Hierarchies::detect().unwrap().v2 else {
        eprintln!("SKIP: no cgroup v2 hierarchy mounted");
        return;
    };
    let path = base.join(phase_dir_name("t-v2kill"));
    fs::create_dir(&path).unwrap();
    let cgroup = bare_v2(path.clone());
    let mut child = spawn_in(&cgroup, "sleep 60 & sleep 60 & wait");
    wait_until("sh and 2 sleeps run", Duration::from_secs(10), || {
        process_count(&cgroup) == 3
    });
    // cgroup.kill alone, no signal from us: Linux 5.14+.
    assert!(
        cgroup.dirs[0].write_cgroup_kill(),
        "no cgroup.kill in {}",
        path.display()
    );
    wait_until("cgroup.kill empties it", Duration::from_secs(5), || {
        process_count(&cgroup) == 0
    });
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(5)).signal(),
        Some(9)
    );
    drop(cgroup);
    assert!(!path.exists());
}

/// A bare v2 cgroup made for a test; dropping it kills what runs in
/// it and in its children, and removes them all.
struct V2Tree(PhaseCgroup);

impl V2Tree {
    fn new(path: PathBuf) -> Self {
        fs::create_dir(&path).unwrap();
        V2Tree(bare_v2(path))
    }

    fn path(&self) -> &Path {
        &self.0.dirs[0].path
    }
}

impl Drop for V2Tree {
    fn drop(&mut self) {
        for entry in fs::read_dir(self.path()).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                drop(bare_v2(entry.path()));
            }
        }
    }
}

fn bare_v2(path: PathBuf) -> PhaseCgroup {
    let dir = CgroupDir {
        path,
        version: Version::V2,
        controllers: vec![],
    };
    PhaseCgroup { dirs: vec![dir] }
}

/// Takes back a controller the test enabled in a subtree_control.
struct Disable(PathBuf, String);

impl Drop for Disable {
    fn drop(&mut self) {
        let _ = write_file(&self.0, &format!("-{}", self.1));
    }
}

#[test]
fn v2_no_internal_process_rule_is_met_by_moving_into_a_leaf() {
    if !is_root("v2_no_internal_process_rule_is_met_by_moving_into_a_leaf") {
        return;
    }
    let Some(own) = Hierarchies::detect().unwrap().v2 else {
        eprintln!("SKIP: no cgroup v2 hierarchy mounted");
        return;
    };
    // A controller tollgate does not use, so other tests are not disturbed.
    let offered = fs::read_to_string(own.join("cgroup.controllers")).unwrap();
    let spare = ["hugetlb", "misc", "rdma", "io", "cpu"];
    let Some(controller) = spare.into_iter().find(|c| has_word(&offered, c)) else {
        eprintln!("SKIP: cgroup v2 offers no controller but memory and pids here");
        return;
    };
    let own_control = own.join("cgroup.subtree_control");
    let was_enabled = has_word(&fs::read_to_string(&own_control).unwrap(), controller);
    enable_controllers(&own, &[controller]).unwrap();
    // Declared first, dropped last: once the cgroups below are gone.
    let _disable = (!was_enabled).then(|| Disable(own_control, controller.to_owned()));

    // Alone in its cgroup, tollgate moves into a leaf and succeeds.
    let alone = V2Tree::new(own.join(phase_dir_name("t-rule-alone")));
    let result = enable_from_child(alone.path(), controller);
    assert_eq!(result.as_deref(), Some("ok"));
    let control = fs::read_to_string(alone.path().join("cgroup.subtree_control")).unwrap();
    assert!(has_word(&control, controller), "{control:?}");
    let procs = fs::read_to_string(alone.path().join("cgroup.procs")).unwrap();
    assert_eq!(procs, "", "the child left its starting cgroup for a leaf");
    let leaves: Vec<PathBuf> = fs::read_dir(alone.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    assert_eq!(leaves.len(), 1, "{leaves:?}");
    let leaf_name = leaves[0].file_name().unwrap().to_str().unwrap();
    assert!(leaf_name.starts_with("tollgate-host-"), "{leaf_name}");
    // Its tollgate is gone: the empty leaf is stale (once it is old).
    age(&leaves[0]);
    let tree = Hierarchies {
        v2: Some(alone.path().to_owned()),
        ..Hierarchies::default()
    };
    cleanup_stale_in(&tree);
    assert!(
        !leaves[0].exists(),
        "stale leaf {} kept",
        leaves[0].display()
    );

    // Sharing it with another process, tollgate is told why not.
    let shared = V2Tree::new(own.join(phase_dir_name("t-rule-shared")));
    let mut other = Command::new("sleep").arg("30").spawn().unwrap();
    let procs = shared.path().join("cgroup.procs");
    let moved = write_file(&procs, &other.id().to_string());
    let result = enable_from_child(shared.path(), controller);
    drop(shared);
    let _ = other.kill();
    let _ = other.wait();
    moved.unwrap();
    let result = result.unwrap_or_default();
    assert!(
        result.contains("holds processes other than tollgate"),
        "{result}"
    );
}

#[test]
fn v2_controllers_not_offered_are_told_apart() {
    if !is_root("v2_controllers_not_offered_are_told_apart") {
        return;
    }
    let wanted = [Controller::Memory, Controller::Pids];
    let Some(own) = Hierarchies::detect().unwrap().v2 else {
        let all = v2_readiness(None, &wanted);
        assert!(all.iter().all(|(_, r)| *r == Err(V2Refusal::NoHierarchy)));
        return;
    };
    let offered = fs::read_to_string(own.join("cgroup.controllers")).unwrap();
    for (controller, readiness) in v2_readiness(Some(&own), &wanted) {
        let not_offered = readiness == Err(V2Refusal::NotOffered(own.clone()));
        assert_eq!(
            not_offered,
            !has_word(&offered, controller.name()),
            "{controller}"
        );
    }
}

#[test]
fn cleanup_stale_removes_only_dead_owners_dirs() {
    if !is_root("cleanup_stale_removes_only_dead_owners_dirs") {
        return;
    }
    let host = Hierarchies::detect().unwrap();
    let Some(parent) = host
        .v1_pids
        .clone()
        .or(host.v2.clone())
        .or(host.v1_memory.clone())
    else {
        eprintln!("SKIP: no cgroup hierarchy mounted");
        return;
    };
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = DirGuard(parent.join(format!("tollgate-{dead}-t-stale")));
    let stale_leaf = DirGuard(parent.join(format!("tollgate-host-{dead}")));
    let ours = DirGuard(parent.join(phase_dir_name("t-live")));
    // Just made, by an owner we may not see (a tollgate in another PID
    // namespace looks dead from here) and not joined yet: kept.
    let fresh = DirGuard(parent.join(format!("tollgate-{dead}-t-fresh")));
    for dir in [&stale, &stale_leaf, &ours, &fresh] {
        fs::create_dir(&dir.0).unwrap();
    }
    for dir in [&stale, &stale_leaf, &ours] {
        age(&dir.0);
    }
    cleanup_stale();
    assert!(!stale.0.exists() && !stale_leaf.0.exists());
    assert!(ours.0.is_dir(), "the cgroup of a live tollgate was removed");
    assert!(fresh.0.is_dir(), "a cgroup made a moment ago was removed");
}

#[test]
fn join_names_the_file_it_cannot_write() {
    let missing = PathBuf::from("/nonexistent/tollgate-test/cgroup.procs");
    let error = join(&[missing]).unwrap_err();
    assert!(matches!(error, CgroupError::Join { .. }));
    let message = error.to_string();
    assert!(
        message.contains("/nonexistent/tollgate-test/cgroup.procs"),
        "{message}"
    );
    assert!(!message.contains('\n'));
}

#[test]
fn bad_names_are_refused() {
    for name in ["", "a/b", "a:b", "x y", &"n".repeat(201)] {
        let error = PhaseCgroup::create(name, &Limits::default()).unwrap_err();
        assert!(matches!(error, CgroupError::BadName(_)), "{name:?}");
    }
    assert!(check_name("setup-1a2b.C_d").is_ok());
}

#[test]
fn warnings_name_each_limit_not_enforced() {
    let mut report = Report::asked(Limits {
        memory: Some(8 << 30),
        pids: Some(4096),
    });
    let absent = V2Refusal::NoHierarchy.without_v1(Controller::Memory);
    report.set(Controller::Memory, Enforcement::NotEnforced(absent));
    report.set(Controller::Pids, Enforcement::CgroupV2);
    assert_eq!(
        report.warnings(),
        ["the memory limit (8 GiB) is not enforced: this host has no cgroup memory controller (cgroup v2 or v1)"]
    );
    report.set(Controller::Pids, Enforcement::NotEnforced("why".into()));
    assert_eq!(
        report.warnings()[1],
        "the pids limit (4096) is not enforced: why"
    );

    let not_offered = V2Refusal::NotOffered("/sys/fs/cgroup/a.scope".into());
    let why = not_offered.without_v1(Controller::Memory);
    assert!(why.contains("/sys/fs/cgroup/a.scope") && why.contains("Delegate=yes"));

    let unusable = V2Refusal::Unusable("cgroup /x holds processes".into());
    assert_eq!(
        unusable.without_v1(Controller::Pids),
        "cgroup /x holds processes; and there is no cgroup v1 pids hierarchy to fall back to"
    );
}

#[test]
fn uncapped_swap_is_a_warning() {
    let mut report = Report::asked(Limits {
        memory: Some(32 << 20),
        pids: None,
    });
    report.set(Controller::Memory, Enforcement::CgroupV2);
    assert!(report.warnings().is_empty());
    report.swap_escape = Some(PathBuf::from("/sys/fs/cgroup/x/memory.swap.max"));
    let warnings = report.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].starts_with("the memory limit (32 MiB) holds for RAM only"),
        "{warnings:?}"
    );
}

#[test]
fn bytes_are_shown_in_binary_units() {
    assert_eq!(format_bytes(8 << 30), "8 GiB");
    assert_eq!(format_bytes(512 << 20), "512 MiB");
    assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
    assert_eq!(format_bytes(8_000_000_000), "8000000000 bytes (~7.5 GiB)");
    assert_eq!(format_bytes(1000), "1000 bytes");
}

const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/1a9c
1:cpu,cpuacct:/
0::/
";

#[test]
fn hybrid_host_is_read_per_hierarchy() {
    let host = Hierarchies::from_proc(HYBRID_MOUNTINFO, HYBRID_CGROUP);
    assert_eq!(
        host,
        Hierarchies {
            v2: Some("/sys/fs/cgroup/unified".into()),
            v1_memory: Some("/sys/fs/cgroup/memory/process_api/1a9c".into()),
            v1_pids: Some("/sys/fs/cgroup/pids".into()),
        }
    );
}

#[test]
fn pure_v2_host_has_no_v1() {
    let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
    let host = Hierarchies::from_proc(
        mountinfo,
        "0::/user.slice/user-1000.slice/session-2.scope\n",
    );
    assert_eq!(
        host,
        Hierarchies {
            v2: Some("/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope".into()),
            v1_memory: None,
            v1_pids: None,
        }
    );
}

#[test]
fn container_mounts_map_from_their_root() {
    // A container without a cgroup namespace: the mount shows only its
    // own subtree; a cgroup outside that subtree cannot be reached.
    let mountinfo = "\
700 650 0:26 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw
701 650 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
    let host = Hierarchies::from_proc(mountinfo, "4:memory:/docker/abc/sub\n0::/elsewhere\n");
    assert_eq!(host.v1_memory, Some("/sys/fs/cgroup/memory/sub".into()));
    assert_eq!(host.v2, None);
    let outside = Hierarchies::from_proc(mountinfo, "0::/docker/abc/../x\n");
    assert_eq!(outside.v2, None);
}

#[test]
fn mountinfo_paths_are_unescaped() {
    let line = "41 31 0:38 / /mnt/cgroup\\040two\\134x rw - cgroup2 cgroup2 rw\n";
    let mounts = parse_mountinfo(line);
    assert_eq!(mounts[0].mountpoint, PathBuf::from("/mnt/cgroup two\\x"));
    assert_eq!(unescape_mountinfo("a\\04"), "a\\04");
    assert_eq!(unescape_mountinfo("\\777"), "\\777");
}

#[test]
fn our_host_leaf_is_not_our_cgroup() {
    let base = PathBuf::from("/sys/fs/cgroup/a.scope");
    assert_eq!(without_host_leaf(base.join(host_leaf_name())), base);
    assert_eq!(
        without_host_leaf(base.join("tollgate-host-1")),
        base.join("tollgate-host-1")
    );
}

#[test]
fn owners_are_read_from_directory_names() {
    assert_eq!(owner_pid("tollgate-123-setup.x"), Some(123));
    assert_eq!(owner_pid("tollgate-host-77"), Some(77));
    assert_eq!(owner_pid("tollgate-123-host"), Some(123));
    for other in [
        "tollgate-",
        "tollgate-x-1",
        "tollgate-+1-a",
        "tollgate-0-a",
        "user.slice",
    ] {
        assert_eq!(owner_pid(other), None, "{other}");
    }
}

/// Sets `dir`'s modification time two hours back: older than any
/// cgroup a live tollgate has not joined yet.
fn age(dir: &Path) {
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    fs::File::open(dir)
        .and_then(|dir| dir.set_modified(two_hours_ago))
        .unwrap();
}
