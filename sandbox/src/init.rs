//! PID 1 of the sandbox. Builds the root filesystem, starts the command in
//! a user namespace of its own, gives up every privilege it had, and
//! supervises the command.
//!
//! The order is the one careful runtimes use (nsjail's containProc, youki's
//! init): every step that needs privilege happens before the step that
//! drops it, and nothing reaches the command before its last one. The
//! stage ([`crate::stage`]) has already made the network namespace (with
//! the proxy's listener in it) and made the mount, PID, IPC and UTS
//! namespaces we are PID 1 of.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{unshare, CloneFlags};
use nix::unistd::Pid;

use crate::command::{self, Pending};
use crate::control::{Control, Message};
use crate::dev::{self, Tmpfs};
use crate::ids::IdMapping;
use crate::reaper::{supervise, Signals};
use crate::rootfs::{self, Idmap, Mounter};
use crate::seccomp::Filters;
use crate::spec::Handoff;
use crate::stage::SETUP_FAILED;
use crate::{capabilities, cgroup, mounts, proc, split_root, sys, SandboxError};

/// Runs PID 1 to its end; its exit status is the command's (or
/// [`SETUP_FAILED`] when the sandbox could not be built).
/// On `control` (the stage's connection to the host side) it reports
/// [`Message::Started`] once the root filesystem is in place and the
/// host's is out of reach, takes [`Message::Go`] before the command
/// runs (the host side's proxy serves by then), and reports
/// [`Message::Ended`] last: the host side need not wait for our exit, nor
/// for the stage's, to go on.
pub(crate) fn run(handoff: Handoff, control: &Control) -> i32 {
    let code = ended_with(build_and_supervise(handoff, control));
    let _ = control.send(&Message::Ended(code.unsigned_abs()));
    code
}

fn ended_with(outcome: Result<i32, Ended>) -> i32 {
    match outcome {
        Ok(code) => code,
        Err(Ended::Setup(error)) => {
            let _ = writeln!(std::io::stderr(), "tollgate: sandbox: {error}");
            i32::from(SETUP_FAILED)
        }
        Err(Ended::NotRun(code, why)) => {
            let _ = writeln!(std::io::stderr(), "tollgate: sandbox: {why}");
            code
        }
    }
}

enum Ended {
    Setup(SandboxError),
    NotRun(i32, String),
}

impl From<SandboxError> for Ended {
    fn from(error: SandboxError) -> Ended {
        Ended::Setup(error)
    }
}

fn build_and_supervise(handoff: Handoff, control: &Control) -> Result<i32, Ended> {
    let Handoff {
        spec,
        scratch,
        ids,
        console,
        ..
    } = handoff;
    // 0. Handlers for every signal PID 1 must not miss, before anything can
    //    send one; no descriptor of whoever started us reaches the command.
    let mut signals = Signals::catch()?;
    sys::close_on_exec_above_stderr().map_err(SandboxError::setup(
        "mark inherited descriptors close-on-exec",
    ))?;
    // 1. If the stage dies, so do we, and with PID 1 the whole namespace.
    //    We join the sandbox's cgroups (every process of the sandbox is
    //    born in them; the stage stays out, so they can be removed as soon
    //    as we are gone) and make them the root of a cgroup namespace of
    //    our own.
    die_with_parent()?;
    cgroup::join(&spec.cgroups).map_err(SandboxError::from)?;
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|source| SandboxError::Namespace {
        what: "cgroup",
        source,
    })?;
    // 2. Mount propagation private, so no mount below leaks to the host.
    rootfs::make_mounts_private()?;
    // 3. A scratch tmpfs of this mount namespace for everything that
    //    follows, and a /proc of our PID namespace on it (the one in view
    //    is the host's, where our children's pids mean other processes).
    let mut mounter = Mounter {
        scratch: scratch.clone(),
        idmap: None,
        tmpfs_size: spec.tmpfs_size,
    };
    mounter.mount_scratch()?;
    let our_proc = mounter.own_proc()?;
    // 4. User namespace: the command's process is forked now, and (as
    //    root) makes the user namespace it will run in; we map its ids to
    //    the unprivileged host range (ids.rs) and keep a handle on it for
    //    the idmapped layers. The seccomp filters it and we install
    //    later are compiled once, here.
    let filters = Filters::compile().map_err(SandboxError::from)?;
    let pending = command::fork(&spec, &ids, console.as_ref().map(|c| c.streams), &filters)?;
    mounter.idmap = map_ids(&ids, &our_proc.join(pending.pid.to_string()))?;
    // 5. Overlay root: the base and any earlier layers read-only, idmapped
    //    as root so their files keep their owners inside; writes go to an
    //    upper layer on a sized tmpfs, or, for the phases of a run, to the
    //    run's own directory.
    let mut read_only = Vec::with_capacity(spec.layers.len());
    for (i, layer) in spec.layers.iter().enumerate() {
        read_only.push(mounter.layer(layer, &format!("layer-{i}"))?);
    }
    let layers = mounter.writable(spec.writable.as_deref())?;
    if mounter.idmap.is_none() && split_root::has_mounts_below(&spec.base) {
        split_root::mount_root(&mounter, &spec.base, &read_only, &layers)?;
    } else {
        let base = mounter.layer(&spec.base, "lower-base")?;
        let base = if read_only.is_empty() {
            base
        } else {
            mounter.stackable(&base)?
        };
        mounter.root(&base, &read_only, &layers)?;
    }
    // 6. Host paths bound in, every mount below them too (nosuid, nodev);
    //    tollgate's state, outputs and secret files hidden (masked, not
    //    merely unreadable) at their own path and wherever a mount shows
    //    them (looked for as ourselves: they are private).
    let userns = mounter.idmap.as_ref().map(|idmap| idmap.userns.as_fd());
    mounter.as_sandbox_root(|| mounts::mount_binds(&layers.root, &spec.binds, userns))??;
    let mut hidden = mounts::hidden_paths(&spec.masks, &spec.binds);
    hidden.extend(mounts::aliases(&layers.root, &spec.masks));
    mounter.as_sandbox_root(|| -> Result<(), SandboxError> {
        mounts::mask(&layers.root, &hidden, &layers.empty_file)?;
        // 7. /proc for this PID namespace, host-global knobs read-only and
        //    leaky files hidden; a minimal, read-only /dev (and the
        //    command's terminal as /dev/console); sized
        //    /tmp and /dev/shm. (Mount points are made as the sandbox's
        //    root: they are files of its layers.)
        let tmpfs = Tmpfs {
            size: spec.tmpfs_size,
            owner: mounter
                .idmap
                .as_ref()
                .map(|idmap| (idmap.root_uid, idmap.root_gid)),
        };
        proc::mount_proc(&layers.root)?;
        dev::mount_dev(
            &layers.root,
            tmpfs,
            console.as_ref().map(|c| c.path.as_path()),
        )?;
        dev::mount_tmp(&layers.root, tmpfs)
    })??;
    // 8. pivot_root: the host's filesystem is no longer reachable. Then
    //    the files laid over the root (resolv.conf, the CA bundle, ...).
    let staged = mounter.stage_files(&spec.files)?;
    rootfs::pivot_into(&layers.root)?;
    control.send(&Message::Started)?;
    mounter.as_sandbox_root(|| rootfs::write_files(&spec.files, &staged))??;
    // 9. Own hostname (UTS namespace).
    nix::unistd::sethostname(&spec.hostname).map_err(SandboxError::setup("set hostname"))?;
    drop(mounter);
    // 10. We give up every privilege we had, before the command runs: as
    //     root, the host ids of the sandbox's root (so we may still signal
    //     and reap the command, and nothing else); no capability in any
    //     set, the bounding set included; no_new_privs and a seccomp
    //     filter that allows only what supervising takes; not dumpable, so
    //     nothing in the sandbox may read our memory or environment.
    drop_privileges(&ids, &filters)?;
    // 11. The host side's go: its proxy serves and its policy is loaded
    //     (it loaded them while we built). Without it nothing of the
    //     command runs.
    wait_for_go(control)?;
    // 12. The command: it becomes root of its user namespace, takes its
    //     terminal, drops every capability, sets no_new_privs, installs the
    //     seccomp allowlist and execs (command.rs).
    let child = start(pending)?;
    // 13. Reap, forward signals, and end the namespace with the command.
    Ok(supervise(&mut signals, child)?)
}

/// As root: writes the command process's id maps and opens its user
/// namespace for the idmapped layers. Rootless: nothing to do (the stage's
/// user namespace is the sandbox's).
fn map_ids(ids: &IdMapping, proc: &Path) -> Result<Option<Idmap>, SandboxError> {
    let Some((uid_map, gid_map)) = ids.map_lines() else {
        return Ok(None);
    };
    for (file, text) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        std::fs::write(proc.join(file), text)
            .map_err(SandboxError::io(format!("write the command's {file}")))?;
    }
    let userns = std::fs::File::open(proc.join("ns/user"))
        .map_err(SandboxError::io("open the command's user namespace"))?;
    Ok(Some(Idmap {
        userns: userns.into(),
        root_uid: ids.host_root_uid(),
        root_gid: ids.host_root_gid(),
    }))
}

/// Waits for the go; `Err` when the host side gave up instead.
fn wait_for_go(control: &Control) -> Result<(), Ended> {
    match control.recv(None) {
        Ok(Some(Message::Go)) => Ok(()),
        _ => Err(Ended::NotRun(
            i32::from(SETUP_FAILED),
            "the sandbox was abandoned before its command ran".into(),
        )),
    }
}

fn start(pending: Pending) -> Result<Pid, Ended> {
    pending.go().map_err(|(code, why)| Ended::NotRun(code, why))
}

/// PID 1 keeps nothing it does not need to reap and signal the command.
fn drop_privileges(ids: &IdMapping, filters: &Filters) -> Result<(), SandboxError> {
    capabilities::become_sandbox_root_on_host(ids)?;
    filters.install_for_pid1().map_err(SandboxError::from)
}

/// SIGKILL when the stage goes, and the PID namespace with us.
fn die_with_parent() -> Result<(), SandboxError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(SandboxError::setup("set parent-death signal"))
}
