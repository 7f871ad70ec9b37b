//! `tollgate run` end to end, as root: a real git repo checked out into the
//! setup layer, a setup phase with (loopback) internet and secrets, an agent
//! phase without either, and what a run hands back (result.json, diff.patch,
//! audit.jsonl, one log per phase). DESIGN.md "Environment files" and
//! security invariants 6-7. "The internet" is a loopback upstream reached
//! through a name (`internet.test`) that the setup policy maps to 127.0.0.1;
//! nothing here sends a packet off this machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// Network: setup has the internet, the agent does not

#[test]
fn setup_reaches_the_internet_and_the_agent_gets_403() {
    require_root!();
    let world = RunWorld::new("internet");
    let upstream = Upstream::start();
    let port = upstream.port();
    let env = world.env(&env_file(&format!(
        "{}{INTERNET}",
        setup_key(&format!(
            "curl -sS --max-time 10 -o /dev/null -w 'SETUP_STATUS %{{http_code}}\\n' http://internet.test:{port}/from-setup\n{}",
            direct_attempts("SETUP", port)
        ))
    )));
    let agent = format!(
        "curl -sS --max-time 10 -i -w '\\nAGENT_STATUS %{{http_code}}\\n' http://internet.test:{port}/from-agent\n{}",
        direct_attempts("AGENT", port)
    );
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", &agent],
            ..Spec::default()
        },
    );
    run.expect_code(0);

    assert_eq!(run.expect_value("setup", "SETUP_STATUS"), "200", "{run:#?}");
    assert!(
        upstream.hits() >= 1,
        "setup never reached the upstream: {run:#?}"
    );
    let seen = upstream.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|s| s.contains("/from-setup")),
        "upstream saw {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.contains("/from-agent")),
        "the agent's request reached the upstream: {seen:?}"
    );

    assert_eq!(run.expect_value("agent", "AGENT_STATUS"), "403", "{run:#?}");
    // Invariant 6, in both phases: only `lo`, and no way around the proxy,
    // whatever the phase's policy allows.
    for phase in ["setup", "agent"] {
        let key = phase.to_uppercase();
        assert_eq!(
            run.expect_value(phase, &format!("{key}_NET")),
            "lo",
            "{run:#?}"
        );
        let direct = run.expect_value(phase, &format!("{key}_DIRECT"));
        assert_ne!(direct, "0", "{phase} reached 127.0.0.1 directly: {run:#?}");
    }
    assert!(
        !seen.iter().any(|s| s.contains("/direct")),
        "a direct connection reached the upstream: {seen:?}"
    );
    let agent_text = run.phase_text("agent").join("\n");
    let reason = agent_text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("x-tollgate-reason")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    assert!(
        reason == "mode-off" || agent_text.contains("mode-off"),
        "the agent's 403 does not say mode-off: {agent_text}"
    );
    assert!(
        agent_text.contains("tollgate: blocked"),
        "the 403 body does not explain itself: {agent_text}"
    );

    let audit = run.audit();
    let allowed = audit.iter().find(|r| {
        r["phase"] == "setup" && r["decision"] == "allow" && r["host"] == "internet.test"
    });
    assert!(allowed.is_some(), "no setup allow record: {audit:#?}");
    let denied = audit
        .iter()
        .find(|r| r["phase"] == "agent" && r["decision"] == "deny")
        .unwrap_or_else(|| panic!("no agent deny record: {audit:#?}"));
    assert_eq!(denied["reason"], "mode-off", "{denied:#}");
    assert_eq!(denied["host"], "internet.test", "{denied:#}");
    assert_eq!(denied["status"], 403, "{denied:#}");
    assert!(
        !audit
            .iter()
            .any(|r| r["phase"] == "agent" && r["decision"] == "allow"),
        "the agent was allowed out: {audit:#?}"
    );
}

/// Shell lines printing `<KEY>_NET <interfaces>` and `<KEY>_DIRECT <curl
/// exit status>` for a connection to the host's 127.0.0.1:`port` that
/// bypasses the proxy.
fn direct_attempts(key: &str, port: u16) -> String {
    format!(
        "echo \"{key}_NET $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')\"\n\
         rc=0; curl --noproxy '*' -sS --max-time 3 -o /dev/null http://127.0.0.1:{port}/direct-{key} 2>/dev/null || rc=$?\n\
         echo \"{key}_DIRECT $rc\""
    )
}

// ---------------------------------------------------------------------------
// What carries over from setup to the agent

#[test]
fn files_from_setup_are_visible_to_the_agent_and_env_reaches_every_phase() {
    require_root!();
    let world = RunWorld::new("carry");
    let bashrc_before = std::fs::read("/root/.bashrc").ok();
    let env = world.env(&env_file(&format!(
        "{}env: {{GREETING: hello}}\n",
        setup_key(
            r#"
echo "SETUP_GREETING $GREETING"
echo "SETUP_PWD $PWD"
echo made-by-setup > setup-made.txt
mkdir -p /opt/tg-setup-test && echo outside-the-workspace > /opt/tg-setup-test/file
export FROM_EXPORT=exported
echo 'export FROM_BASHRC=from-bashrc' >> ~/.bashrc
"#
        )
    )));
    // sh, not bash: the variables from ~/.bashrc come from the bash that
    // tollgate starts the agent with.
    let agent = r#"
echo "AGENT_GREETING $GREETING"
echo "AGENT_PWD $PWD"
echo "FILE $(cat setup-made.txt)"
echo "OPT $(cat /opt/tg-setup-test/file)"
echo "EXPORT ${FROM_EXPORT:-unset}"
echo "BASHRC ${FROM_BASHRC:-unset}"
"#;
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", agent],
            ..Spec::default()
        },
    );
    run.expect_code(0);

    assert_eq!(run.expect_value("setup", "SETUP_GREETING"), "hello");
    assert_eq!(run.expect_value("agent", "AGENT_GREETING"), "hello");
    assert_eq!(run.expect_value("setup", "SETUP_PWD"), WORKSPACE);
    assert_eq!(run.expect_value("agent", "AGENT_PWD"), WORKSPACE);
    assert_eq!(run.expect_value("agent", "FILE"), "made-by-setup");
    assert_eq!(run.expect_value("agent", "OPT"), "outside-the-workspace");
    assert_eq!(run.expect_value("agent", "EXPORT"), "unset", "{run:#?}");
    assert_eq!(
        run.expect_value("agent", "BASHRC"),
        "from-bashrc",
        "{run:#?}"
    );

    // Nothing of it reached the host.
    assert!(!Path::new("/opt/tg-setup-test").exists());
    assert_eq!(std::fs::read("/root/.bashrc").ok(), bashrc_before);
    assert!(!world.repo.path.join("setup-made.txt").exists());

    // The logs hold what the terminal showed, raw: without time stamps.
    let setup_log = run.expect_file("setup.log");
    let agent_log = run.expect_file("agent.log");
    assert!(setup_log.contains("SETUP_GREETING hello"), "{setup_log}");
    assert!(agent_log.contains("AGENT_GREETING hello"), "{agent_log}");
    assert_eq!(
        setup_log.lines().collect::<Vec<_>>(),
        run.phase_text("setup")
    );
    assert_eq!(
        agent_log.lines().collect::<Vec<_>>(),
        run.phase_text("agent")
    );
    assert!(setup_log.lines().all(|line| strip_stamp(line).is_none()));
}

#[test]
fn the_terminal_shows_each_phase_under_a_header_with_time_stamps() {
    require_root!();
    let world = RunWorld::new("stream");
    let env = world.env(&env_file(&setup_key("echo one\necho two")));
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "echo three; printf 'no newline at the end'"],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    let lines: Vec<&str> = run.stdout().lines().collect();
    let setup_at = lines.iter().position(|l| *l == "━━━ setup ━━━");
    let agent_at = lines.iter().position(|l| *l == "━━━ agent ━━━");
    assert!(
        matches!((setup_at, agent_at), (Some(s), Some(a)) if s < a),
        "headers missing or out of order: {run:#?}"
    );
    for line in &lines {
        assert!(
            line.starts_with("━━━ ") || strip_stamp(line).is_some(),
            "stdout line neither a header nor stamped: {line:?}\n{run:#?}"
        );
    }
    assert_eq!(run.phase_text("setup"), ["one", "two"], "{run:#?}");
    assert_eq!(
        run.phase_text("agent"),
        ["three", "no newline at the end"],
        "{run:#?}"
    );
    assert!(
        run.stderr()
            .contains(&format!("tollgate: outputs in {}", run.out.display())),
        "{run:#?}"
    );
    assert!(
        run.stderr().contains(WORKSPACE),
        "no checkout line: {run:#?}"
    );
    for line in run.stderr().lines() {
        assert!(line.starts_with("tollgate: "), "stray stderr line {line:?}");
    }
}

// ---------------------------------------------------------------------------
// Secrets (invariant 7)

#[test]
fn secrets_reach_setup_only() {
    require_root!();
    let world = RunWorld::new("secrets");
    let upstream = Upstream::start();
    let port = upstream.port();
    let id = unique();
    let token = format!("tgsecret-env-{id}");
    let file_token = format!("tgsecret-file-{id}");
    let var = format!("TG_TEST_TOKEN_{id}");
    let token_file = world.dir.write("token.txt", &file_token);
    let (t, f) = (printf_octal(&token), printf_octal(&file_token));
    let setup = format!(
        r#"
[ "$TOKEN" = "$(printf '{t}')" ] || {{ echo "TOKEN is not the secret"; exit 1; }}
[ "$FILETOKEN" = "$(printf '{f}')" ] || {{ echo "FILETOKEN is not the secret"; exit 1; }}
echo "ECHO $TOKEN $FILETOKEN"
echo "ERR $TOKEN" >&2
printf 'SPLIT %s' "${{TOKEN:0:9}}"; sleep 0.3; printf '%s\n' "${{TOKEN:9}}"
curl -sS --max-time 10 -o /dev/null "http://internet.test:{port}/login/$TOKEN"
"#
    );
    let env = world.env(&env_file(&format!(
        "{}{INTERNET}secrets:\n  TOKEN: {{from_env: {var}}}\n  FILETOKEN: {{from_file: {}}}\n",
        setup_key(&setup),
        token_file.display()
    )));
    // The agent looks for either value everywhere it can, without the
    // values being in its own script.
    let agent = format!(
        r#"
printf '{t}' > /tmp/n1; printf '{f}' > /tmp/n2
check() {{ if grep -a -q -F -f /tmp/n1 "$@" 2>/dev/null || grep -a -q -F -f /tmp/n2 "$@" 2>/dev/null; then echo FOUND; else echo CLEAN; fi; }}
env > /tmp/env.txt
echo "ENV $(check /tmp/env.txt)"
echo "ENVIRON $(check /proc/[0-9]*/environ)"
echo "CMDLINE $(check /proc/[0-9]*/cmdline)"
echo "NAMES ${{TOKEN+TOKEN}}${{FILETOKEN+FILETOKEN}}none"
echo "FILES $(grep -r -a -l -F -f /tmp/n1 /workspace /root/.bashrc /root/.profile 2>/dev/null | head -1)none"
echo "FILES2 $(grep -r -a -l -F -f /tmp/n2 /workspace /root/.bashrc /root/.profile 2>/dev/null | head -1)none"
echo "SCRIPT $(ls /tmp/tollgate/setup.sh 2>/dev/null)none"
"#
    );
    let run = world.run(
        &env,
        &Spec {
            agent: &["bash", "-c", &agent],
            vars: &[(&var, &token)],
            ..Spec::default()
        },
    );
    run.expect_code(0);

    // Setup had both values (it checked them) and reached the upstream.
    assert_eq!(run.expect_value("setup", "ECHO"), "*** ***", "{run:#?}");
    assert_eq!(run.expect_value("setup", "ERR"), "***", "{run:#?}");
    assert_eq!(run.expect_value("setup", "SPLIT"), "***", "{run:#?}");
    assert!(
        run.expect_file("setup.log").contains("ECHO *** ***"),
        "{run:#?}"
    );
    assert!(
        upstream
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.contains(&token)),
        "setup did not send its token: {run:#?}"
    );

    // The agent found neither, anywhere.
    for key in ["ENV", "ENVIRON", "CMDLINE"] {
        assert_eq!(run.expect_value("agent", key), "CLEAN", "{key}: {run:#?}");
    }
    assert_eq!(run.expect_value("agent", "NAMES"), "none", "{run:#?}");
    assert_eq!(run.expect_value("agent", "FILES"), "none", "{run:#?}");
    assert_eq!(run.expect_value("agent", "FILES2"), "none", "{run:#?}");
    assert_eq!(run.expect_value("agent", "SCRIPT"), "none", "{run:#?}");

    // No output shows either value: terminal, logs, audit, result, diff.
    for value in [&token, &file_token] {
        assert!(!run.stdout().contains(value.as_str()), "stdout: {run:#?}");
        assert!(!run.stderr().contains(value.as_str()), "stderr: {run:#?}");
        let files = files_containing(&run.out, value);
        assert!(files.is_empty(), "the secret is in {files:?}");
    }
    // The audit log recorded the request, with the value blanked.
    let audit = run.audit();
    assert!(
        audit.iter().any(|r| r["phase"] == "setup"
            && r["decision"] == "allow"
            && r["path"] == "/login/***"),
        "{audit:#?}"
    );
    // Nor does the state dir (the cache holds hashes of values, never values).
    for value in [&token, &file_token] {
        let files = files_containing(&world.state, value);
        assert!(files.is_empty(), "the secret is in {files:?}");
    }
    // No warning about files: setup left the values nowhere.
    let result = run.result();
    let warnings = result["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        !warnings.iter().any(|w| w
            .as_str()
            .unwrap_or_default()
            .contains("contains the value")),
        "{warnings:?}"
    );
}

#[test]
fn a_secret_that_setup_leaves_in_a_file_is_named_in_a_warning_never_shown() {
    require_root!();
    let world = RunWorld::new("leak");
    let id = unique();
    let token = format!("tgleaked-{id}");
    let var = format!("TG_TEST_LEAK_{id}");
    let env = world.env(&env_file(&format!(
        "{}secrets:\n  API_TOKEN: {{from_env: {var}}}\n",
        setup_key("mkdir -p config\necho \"token=$API_TOKEN\" > config/leaked.conf")
    )));
    // The agent copies the file setup left: its change (the diff) holds the
    // value too.
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "cp config/leaked.conf copied.conf"],
            vars: &[(&var, &token)],
            ..Spec::default()
        },
    );
    run.expect_code(0);

    let warning = run
        .stderr()
        .lines()
        .find(|l| l.contains("warning") && l.contains("leaked.conf"))
        .unwrap_or_else(|| panic!("no warning naming config/leaked.conf: {run:#?}"));
    assert!(warning.contains("API_TOKEN"), "{warning}");
    assert!(warning.starts_with("tollgate: "), "{warning}");
    let result = run.result();
    let warnings: Vec<String> = result["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings in {result:#}"))
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("leaked.conf") && w.contains("API_TOKEN")),
        "{warnings:?}"
    );

    let diff = run.expect_file("diff.patch");
    assert!(diff.contains("copied.conf"), "{diff}");
    assert!(diff.contains("token=***"), "{diff}");
    assert!(!run.stdout().contains(&token), "{run:#?}");
    assert!(!run.stderr().contains(&token), "{run:#?}");
    let files = files_containing(&run.out, &token);
    assert!(files.is_empty(), "the secret is in {files:?}");
}

// ---------------------------------------------------------------------------
// Nothing of setup but its files reaches the agent phase (invariant 7)

#[test]
fn a_background_process_from_setup_is_gone_in_the_agent_phase() {
    require_root!();
    let world = RunWorld::new("background");
    let id = unique();
    let pattern = format!(r"^sleep 40[12]\.{id}$");
    let env = world.env(&env_file(&setup_key(&format!(
        r#"
sleep 401.{id} &
setsid nohup sh -c 'trap "" TERM HUP; exec sleep 402.{id}' >/dev/null 2>&1 < /dev/null &
sleep 0.2
echo "BG $(pgrep -c -f '{pattern}')"
"#
    ))));
    let agent = format!(
        "echo AGENT_STARTED; echo \"COUNT $(pgrep -c -f '{pattern}')\"; sleep 1; echo AGENT_DONE"
    );
    let running = world.start(
        &env,
        &Spec {
            agent: &["sh", "-c", &agent],
            ..Spec::default()
        },
    );
    // While the agent runs, the host has no process left from setup.
    let agent_log = running.out.join("agent.log");
    let started = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&agent_log).is_ok_and(|t| t.contains("AGENT_STARTED"))
    });
    let during = pgrep(&pattern);
    let run = world.finish(running);
    assert!(started, "the agent never started: {run:#?}");
    run.expect_code(0);
    assert_eq!(run.expect_value("setup", "BG"), "2", "{run:#?}");
    assert!(
        during.is_empty(),
        "setup's processes still ran while the agent did: {during:?}"
    );
    assert_eq!(run.expect_value("agent", "COUNT"), "0", "{run:#?}");
    assert!(
        run.phase_text("agent").iter().any(|l| l == "AGENT_DONE"),
        "{run:#?}"
    );
    assert!(pgrep(&pattern).is_empty(), "left running after the run");
}

#[test]
fn a_connection_opened_in_setup_is_closed_before_the_agent_starts() {
    require_root!();
    let world = RunWorld::new("connection");
    let upstream = Dribbler::start();
    let port = upstream.port;
    let env = world.env(&env_file(&format!(
        "{}{INTERNET}",
        setup_key(&format!(
            "curl -sN --max-time 100 http://internet.test:{port}/stream >/tmp/stream &\n\
             for i in $(seq 200); do [ -s /tmp/stream ] && break; sleep 0.1; done\n\
             sleep 1\necho SETUP_DONE"
        ))
    )));
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "echo \"NOW $(date +%s%N)\""],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    let accepted = upstream
        .accepted
        .lock()
        .unwrap()
        .unwrap_or_else(|| panic!("setup's request never reached the upstream: {run:#?}"));
    assert!(
        upstream.dribbled.load(Ordering::SeqCst) >= 3,
        "the stream did not flow for a while: {run:#?}"
    );
    let closed = eventually(Duration::from_secs(5), || {
        upstream.closed.lock().unwrap().is_some()
    });
    assert!(
        closed,
        "the connection setup opened is still open after the run: {run:#?}"
    );
    let closed = upstream.closed.lock().unwrap().unwrap();
    let agent_now: u128 = run
        .expect_value("agent", "NOW")
        .parse()
        .unwrap_or_else(|e| panic!("agent's clock: {e}: {run:#?}"));
    assert!(nanos_since_epoch(closed) >= nanos_since_epoch(accepted));
    assert!(
        nanos_since_epoch(closed) < agent_now,
        "the upstream connection closed {} ms after the agent started",
        (nanos_since_epoch(closed) - agent_now) / 1_000_000
    );
}

// ---------------------------------------------------------------------------
// The checkout

#[test]
fn branch_and_commit_are_checked_out_and_the_host_repo_is_untouched() {
    require_root!();
    let world = RunWorld::new("checkout");
    let before = world.repo.fingerprint();

    // --branch feature. Setup overwrites every object file of the clone in
    // place: were the clone hard-linked to the host's repo, that would
    // corrupt it.
    let env = world.env(&env_file(&setup_key(
        r#"
for f in .git/objects/??/*; do chmod u+w "$f"; printf corrupt > "$f"; done
echo corrupted
"#,
    )));
    let agent = r#"
echo "FEATURE $(cat feature.txt)"
echo "HEADREF $(cat .git/HEAD)"
git checkout -q -b agent-branch 2>/dev/null; echo agent >> README.md; rm -f old.txt
"#;
    let run = world.run(
        &env,
        &Spec {
            args: &["--branch", "feature"],
            agent: &["sh", "-c", agent],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    assert_eq!(run.expect_value("agent", "FEATURE"), "feature work");
    assert_eq!(
        run.expect_value("agent", "HEADREF"),
        "ref: refs/heads/feature"
    );
    let repo = &run.result()["repo"];
    assert_eq!(repo["branch"], "feature", "{repo:#}");
    assert_eq!(repo["commit"], world.repo.feature.as_str(), "{repo:#}");
    assert_eq!(repo["name"], REPO_NAME, "{repo:#}");
    assert_eq!(
        repo["source"],
        std::fs::canonicalize(&world.repo.path)
            .unwrap()
            .to_string_lossy()
            .as_ref(),
        "{repo:#}"
    );

    // --commit: the first commit, detached.
    let env = world.env(&env_file(&setup_key("true")));
    let agent = r#"
echo "HEAD $(git rev-parse HEAD)"
echo "LIB $(cat src/lib.txt)"
echo "FEATURE $(cat feature.txt 2>/dev/null || echo absent)"
"#;
    let run = world.run(
        &env,
        &Spec {
            args: &["--commit", &world.repo.first],
            agent: &["sh", "-c", agent],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    assert_eq!(run.expect_value("agent", "HEAD"), world.repo.first);
    assert_eq!(run.expect_value("agent", "LIB"), "lib v1");
    assert_eq!(run.expect_value("agent", "FEATURE"), "absent");
    let repo = &run.result()["repo"];
    assert_eq!(repo["commit"], world.repo.first.as_str(), "{repo:#}");

    // No option: the default branch.
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "echo \"HEAD $(git rev-parse HEAD)\""],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    assert_eq!(run.expect_value("agent", "HEAD"), world.repo.main);
    let repo = &run.result()["repo"];
    assert_eq!(repo["branch"], "main", "{repo:#}");
    assert_eq!(repo["commit"], world.repo.main.as_str(), "{repo:#}");

    assert_eq!(world.repo.fingerprint(), before, "the host repo changed");
    git(&world.repo.path, &["fsck", "--full", "--no-progress"]);
}

// ---------------------------------------------------------------------------
// Exit status

#[test]
fn the_run_exits_with_the_agents_status() {
    require_root!();
    let world = RunWorld::new("agent-status");
    let env = world.env(&env_file(&setup_key("echo setup-ok")));
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "echo AGENT_RAN; exit 7"],
            ..Spec::default()
        },
    );
    run.expect_code(7);
    let result = run.result();
    assert_eq!(result["exit_code"], 7, "{result:#}");
    assert_eq!(result["env"], "test-env", "{result:#}");
    assert_eq!(run.phase_names(), ["setup", "agent"]);
    let (setup, agent) = (&result["phases"][0], &result["phases"][1]);
    assert_eq!(setup["exit_code"], 0, "{result:#}");
    assert_eq!(agent["exit_code"], 7, "{result:#}");
    for phase in [setup, agent] {
        assert!(phase["duration_ms"].is_u64(), "{phase:#}");
        assert_eq!(phase["timed_out"], false, "{phase:#}");
        assert_eq!(phase["oom_killed"], false, "{phase:#}");
        assert_eq!(phase["interrupted"], false, "{phase:#}");
        let log = phase["log"].as_str().unwrap_or_default();
        assert!(run.file(log).is_some(), "log {log:?} missing: {phase:#}");
    }
    let cache = &result["cache"];
    assert!(
        ["disabled", "miss", "hit"].contains(&cache["status"].as_str().unwrap_or_default()),
        "{cache:#}"
    );
    let key = cache["key"].as_str().unwrap_or_default();
    assert!(
        key.len() >= 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "cache key {key:?}"
    );
    assert_eq!(result["diff"]["path"], "diff.patch", "{result:#}");
    assert!(result["warnings"].is_array(), "{result:#}");

    // An agent killed by a signal: 128 + its number, as a shell reports it.
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "kill -9 $$"],
            ..Spec::default()
        },
    );
    run.expect_code(137);
    assert_eq!(run.result()["phases"][1]["exit_code"], 137);
}

#[test]
fn a_failing_setup_stops_the_run() {
    require_root!();
    let world = RunWorld::new("setup-fails");
    let env = world.env(&env_file(&setup_key(
        "echo step-one\n(exit 3)\necho never-printed",
    )));
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "echo AGENT_RAN > /tmp/x; echo AGENT_RAN"],
            ..Spec::default()
        },
    );
    run.expect_code(3);
    assert_eq!(run.phase_text("setup"), ["step-one"], "{run:#?}");
    assert!(!run.stdout().contains("━━━ agent ━━━"), "{run:#?}");
    assert!(!run.stdout().contains("AGENT_RAN"), "{run:#?}");
    assert!(run.file("agent.log").is_none(), "{run:#?}");
    assert!(
        run.stderr().contains("tollgate: setup exited with 3")
            && run.stderr().contains("the agent did not run")
            && run.stderr().contains("setup.log"),
        "{run:#?}"
    );
    let result = run.result();
    assert_eq!(run.phase_names(), ["setup"], "{result:#}");
    assert_eq!(result["phases"][0]["exit_code"], 3, "{result:#}");
    assert_eq!(result["exit_code"], 3, "{result:#}");
    assert!(result["diff"].is_null(), "{result:#}");

    // `false` alone fails the script too (bash -e).
    let env = world.env(&env_file(&setup_key("false\necho never-printed")));
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "echo AGENT_RAN"],
            ..Spec::default()
        },
    );
    run.expect_code(1);
    assert!(!run.stdout().contains("never-printed"), "{run:#?}");
    assert!(!run.stdout().contains("AGENT_RAN"), "{run:#?}");
}

#[test]
fn without_an_agent_command_the_run_stops_after_setup() {
    require_root!();
    let world = RunWorld::new("no-agent");
    let env = world.env(&env_file(&setup_key("echo set-up")));
    let run = world.run(&env, &Spec { ..Spec::default() });
    run.expect_code(0);
    assert_eq!(run.phase_text("setup"), ["set-up"]);
    let result = run.result();
    assert_eq!(run.phase_names(), ["setup"], "{result:#}");
    assert_eq!(result["exit_code"], 0, "{result:#}");
    assert!(run.file("agent.log").is_none());

    // Without an agent, setup's status is the run's.
    let env = world.env(&env_file(&setup_key("exit 5")));
    let run = world.run(&env, &Spec { ..Spec::default() });
    run.expect_code(5);
}

// ---------------------------------------------------------------------------
// The diff

/// The part of a git patch about `path` (from its `diff --git` line).
fn patch_of<'a>(patch: &'a str, path: &str) -> Option<&'a str> {
    let header = format!("diff --git a/{path} b/{path}\n");
    let start = patch.find(&header)?;
    let rest = &patch[start + header.len()..];
    let end = rest.find("\ndiff --git ").map_or(rest.len(), |e| e + 1);
    Some(&patch[start..start + header.len() + end])
}

#[test]
fn the_diff_holds_modified_new_deleted_and_binary_files() {
    require_root!();
    let world = RunWorld::new("diff");
    // Setup's own changes are part of the environment, not of the diff.
    let env = world.env(&env_file(&setup_key(
        "echo setup-artifact > setup-only.txt\necho 'lib by setup' > src/lib.txt",
    )));
    let agent = r#"
set -e
printf 'agent line\n' >> README.md
mkdir -p new/dir && echo brand-new > new/dir/file.txt
rm old.txt
printf '\000\001\002\377 new binary \376\000' > blob.bin
printf '\000\377 changed binary\n' > data.bin
git status --porcelain > /dev/null
echo outside > /root/tg-agent-home-file
for f in README.md new/dir/file.txt blob.bin data.bin; do echo "SUM $(sha256sum "$f")"; done
"#;
    let run = world.run(
        &env,
        &Spec {
            agent: &["bash", "-c", agent],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    let patch = run.expect_file("diff.patch");
    let block = |path: &str| {
        patch_of(&patch, path).unwrap_or_else(|| panic!("{path} not in the diff:\n{patch}"))
    };
    assert!(block("README.md").contains("+agent line"), "{patch}");
    assert!(
        block("new/dir/file.txt").contains("new file mode"),
        "{patch}"
    );
    assert!(block("new/dir/file.txt").contains("+brand-new"), "{patch}");
    assert!(block("old.txt").contains("deleted file mode"), "{patch}");
    assert!(block("blob.bin").contains("new file mode"), "{patch}");
    assert!(block("blob.bin").contains("GIT binary patch"), "{patch}");
    assert!(block("data.bin").contains("GIT binary patch"), "{patch}");
    for absent in [
        "setup-only.txt",
        "src/lib.txt",
        "lib by setup",
        "a/.git/",
        "tg-agent-home-file",
        "/workspace",
    ] {
        assert!(!patch.contains(absent), "{absent} in the diff:\n{patch}");
    }
    let result = run.result();
    let diff = &result["diff"];
    assert_eq!(diff["path"], "diff.patch", "{result:#}");
    assert_eq!(diff["files_changed"], 5, "{result:#}");
    assert_eq!(diff["bytes"], patch.len() as u64, "{result:#}");

    // The patch applied to a fresh clone at the same commit gives the
    // agent's files.
    let fresh = world.dir.path("fresh");
    git(
        &world.dir.0,
        &[
            "clone",
            "-q",
            "--no-hardlinks",
            world.repo.path.to_str().unwrap(),
            fresh.to_str().unwrap(),
        ],
    );
    let commit = result["repo"]["commit"].as_str().unwrap().to_owned();
    assert_eq!(commit, world.repo.main);
    git(&fresh, &["checkout", "-q", &commit]);
    git(
        &fresh,
        &["apply", run.out.join("diff.patch").to_str().unwrap()],
    );
    let sums: Vec<String> = run
        .phase_text("agent")
        .iter()
        .filter_map(|l| l.strip_prefix("SUM ").map(str::to_owned))
        .collect();
    assert_eq!(sums.len(), 4, "{run:#?}");
    let host_sums = tool_ok(
        Command::new("sha256sum")
            .args(["README.md", "new/dir/file.txt", "blob.bin", "data.bin"])
            .current_dir(&fresh),
    );
    assert_eq!(
        host_sums.lines().collect::<Vec<_>>(),
        sums,
        "the patched clone differs from the agent's files"
    );
    assert!(!fresh.join("old.txt").exists(), "old.txt not deleted");
    assert_eq!(
        std::fs::read_to_string(fresh.join("src/lib.txt")).unwrap(),
        "lib v2\n"
    );
}

#[test]
fn the_host_never_runs_what_the_agent_puts_in_git_config_or_attributes() {
    require_root!();
    let world = RunWorld::new("git-hooks");
    // Host-side paths: inside the sandbox /tmp is a private tmpfs, so only a
    // command run on the host can create them.
    let mark = |what: &str| world.dir.path(&format!("pwned-{what}"));
    let agent = format!(
        r#"
cat >> .git/config <<'CFG'
[core]
	fsmonitor = "touch {fsmonitor}; false"
	pager = "touch {pager}; cat"
	hooksPath = /workspace/proj/hooks
[diff]
	external = "touch {external}; true"
[diff "evil"]
	textconv = "touch {textconv}; cat"
[filter "evil"]
	clean = "touch {clean}; cat"
	smudge = "touch {clean}; cat"
CFG
mkdir -p hooks && printf '#!/bin/sh\ntouch {hook}\n' > hooks/post-checkout && chmod +x hooks/post-checkout
printf '* diff=evil filter=evil\n' > .gitattributes
echo changed >> README.md
echo new > new.txt
"#,
        fsmonitor = mark("fsmonitor").display(),
        pager = mark("pager").display(),
        external = mark("external").display(),
        textconv = mark("textconv").display(),
        clean = mark("clean").display(),
        hook = mark("hook").display(),
    );
    let run = world.run(
        &world.env(&env_file(&setup_key("true"))),
        &Spec {
            agent: &["bash", "-c", &agent],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    for what in [
        "fsmonitor",
        "pager",
        "external",
        "textconv",
        "clean",
        "hook",
    ] {
        assert!(
            !mark(what).exists(),
            "the host ran the agent's git {what} command: {run:#?}"
        );
    }
    let patch = run.expect_file("diff.patch");
    assert!(patch_of(&patch, "README.md").is_some(), "{patch}");
    assert!(patch_of(&patch, ".gitattributes").is_some(), "{patch}");
    assert!(!patch.contains("a/.git/"), "{patch}");
}

#[test]
fn an_agent_that_changes_nothing_gets_an_empty_diff() {
    require_root!();
    let world = RunWorld::new("no-change");
    let env = world.env(&env_file(&setup_key(
        "echo setup-artifact > setup-only.txt",
    )));
    let run = world.run(
        &env,
        &Spec {
            agent: &[
                "sh",
                "-c",
                "cat README.md > /dev/null; echo scratch > /tmp/x",
            ],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    let result = run.result();
    assert_eq!(result["diff"]["files_changed"], 0, "{result:#}");
    let patch = run.file("diff.patch").unwrap_or_default();
    assert!(patch.trim().is_empty(), "{patch}");
}

// ---------------------------------------------------------------------------
// Configuration errors

/// `text` has `file:LINE:COL` (any line when `line` is None).
fn has_line_col(text: &str, file: &str, line: Option<usize>) -> bool {
    let prefix = format!("{file}:");
    text.match_indices(&prefix).any(|(at, _)| {
        let rest = &text[at + prefix.len()..];
        let Some((l, after)) = rest.split_once(':') else {
            return false;
        };
        let col: String = after.chars().take_while(char::is_ascii_digit).collect();
        l.parse::<usize>()
            .is_ok_and(|n| line.is_none_or(|want| want == n))
            && !col.is_empty()
    })
}

/// What is wrong with a refused run's output, if anything: exit 2, one
/// `tollgate: ` line on stderr holding every word in `words`, nothing on
/// stdout, no output dir and no run dir.
fn refusal_problems(world: &RunWorld, what: &str, run: &RunOut, words: &[&str]) -> Vec<String> {
    let stderr = run.stderr().trim();
    let mut problems = Vec::new();
    if run.code() != Some(2) {
        problems.push(format!("{what}: exit {:?}, expected 2", run.code()));
    }
    if stderr.lines().count() != 1 || !stderr.starts_with("tollgate: ") {
        problems.push(format!("{what}: not one `tollgate: ` line: {stderr:?}"));
    }
    for word in words {
        if !stderr.contains(word) {
            problems.push(format!("{what}: no {word:?} in {stderr:?}"));
        }
    }
    if !run.stdout().is_empty() {
        problems.push(format!("{what}: stdout {:?}", run.stdout()));
    }
    if run.out.exists() {
        problems.push(format!(
            "{what}: created the output dir {}",
            run.out.display()
        ));
    }
    let runs = world.state.join("runs");
    if !std::fs::read_dir(&runs).map_or(true, |mut e| e.next().is_none()) {
        problems.push(format!("{what}: left a run directory"));
    }
    problems
}

#[test]
fn bad_environment_files_are_refused_with_file_line_and_a_hint() {
    require_root!();
    let world = RunWorld::new("bad-env");
    let unset = format!("TG_TEST_SURELY_UNSET_{}", unique());
    let mut problems = Vec::new();
    // (name, body after `version` and `name`, line of the error, words the
    // message must have besides the file name and line). Errors inside an
    // inline policy name the key and the environment file's line.
    let cases: Vec<(&str, String, Option<usize>, Vec<&str>)> = vec![
        (
            "typo-key",
            "setpu: echo hi\n".into(),
            Some(3),
            vec!["setpu"],
        ),
        (
            "bad-duration",
            "limits:\n  setup_timeout: five minutes\n".into(),
            Some(4),
            vec!["setup_timeout", "30m"],
        ),
        (
            "bad-size",
            "limits:\n  memory: 8 gigs\n".into(),
            Some(4),
            vec!["memory", "8G"],
        ),
        (
            "secret-without-source",
            "secrets:\n  TOKEN: {}\n".into(),
            Some(4),
            vec!["TOKEN", "from_env"],
        ),
        (
            "unknown-phase",
            "internet:\n  build: {mode: off}\n".into(),
            Some(4),
            vec!["build"],
        ),
        (
            "malformed",
            "name2: [unclosed\nenv: {\n".into(),
            Some(3),
            vec![],
        ),
        (
            "bad-inline-policy",
            "internet:\n  agent: {mode: sometimes}\n".into(),
            Some(4),
            vec!["sometimes", "internet.agent"],
        ),
        (
            "bad-inline-pattern",
            "internet:\n  setup: {mode: limited, allow: [\"git*.com\"]}\n".into(),
            Some(4),
            vec!["git*.com", "label-aligned", "internet.setup"],
        ),
    ];
    for (name, body, line, words) in &cases {
        let run = world.run(
            &world.env(&env_file(body)),
            &Spec {
                agent: &["true"],
                ..Spec::default()
            },
        );
        let file = run.env_path.display().to_string();
        problems.extend(refusal_problems(&world, name, &run, words));
        if line.is_some() && !has_line_col(run.stderr(), &file, *line) {
            problems.push(format!(
                "{name}: no {file}:{line:?}:COL in {:?}",
                run.stderr().trim()
            ));
        }
    }

    // Errors outside the YAML's syntax: the file and the key still named.
    let run = world.run(
        &world.env(&env_file(&format!(
            "secrets:\n  TOKEN: {{from_env: {unset}}}\n"
        ))),
        &Spec {
            agent: &["true"],
            ..Spec::default()
        },
    );
    let file = run
        .env_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    problems.extend(refusal_problems(
        &world,
        "unset-variable",
        &run,
        &[&unset, "TOKEN", &file],
    ));
    let run = world.run(
        &world.env(&env_file(
            "internet:\n  agent: {file: /nonexistent/tg-policy.yaml}\n",
        )),
        &Spec {
            agent: &["true"],
            ..Spec::default()
        },
    );
    problems.extend(refusal_problems(
        &world,
        "missing-policy-file",
        &run,
        &["/nonexistent/tg-policy.yaml", "internet"],
    ));

    // Bad revisions, refused before anything is cloned.
    let good = env_file(&setup_key("true"));
    for (args, word) in [
        (&["--branch=-x"][..], "--branch"),
        (&["--branch", "two words"][..], "--branch"),
        (&["--commit", "not-hex"][..], "--commit"),
    ] {
        let run = world.run(
            &world.env(&good),
            &Spec {
                args,
                agent: &["true"],
                ..Spec::default()
            },
        );
        problems.extend(refusal_problems(
            &world,
            &format!("{args:?}"),
            &run,
            &[word],
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_branch_or_commit_that_does_not_exist_is_refused_with_one_line() {
    require_root!();
    let world = RunWorld::new("no-such-rev");
    let env = world.env(&env_file(&setup_key("true")));
    let mut problems = Vec::new();
    for (args, words) in [
        (
            &["--branch", "no-such-branch"][..],
            &["--branch", "no-such-branch"][..],
        ),
        (&["--commit", "deadbeef"][..], &["--commit", "deadbeef"][..]),
    ] {
        let run = world.run(
            &env,
            &Spec {
                args,
                agent: &["true"],
                ..Spec::default()
            },
        );
        problems.extend(refusal_problems(&world, &format!("{args:?}"), &run, words));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// Timeouts

#[test]
fn a_setup_past_its_timeout_is_stopped() {
    require_root!();
    let world = RunWorld::new("setup-timeout");
    let env = world.env(&env_file(&format!(
        "{}limits: {{setup_timeout: 2s}}\n",
        setup_key("echo started\nsleep 60\necho never-printed")
    )));
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "echo AGENT_RAN"],
            ..Spec::default()
        },
    );
    assert!(
        run.done.elapsed < Duration::from_secs(15),
        "took {:?}: {run:#?}",
        run.done.elapsed
    );
    assert!(run.done.elapsed >= Duration::from_secs(2), "{run:#?}");
    run.expect_code(124);
    assert_eq!(run.phase_text("setup"), ["started"], "{run:#?}");
    assert!(!run.stdout().contains("AGENT_RAN"), "{run:#?}");
    assert!(run.stderr().contains("setup_timeout"), "{run:#?}");
    let result = run.result();
    assert_eq!(run.phase_names(), ["setup"], "{result:#}");
    assert_eq!(result["phases"][0]["timed_out"], true, "{result:#}");
    assert_eq!(result["phases"][0]["exit_code"], 124, "{result:#}");
    assert_eq!(result["exit_code"], 124, "{result:#}");
}

#[test]
fn an_agent_past_its_timeout_is_stopped() {
    require_root!();
    let world = RunWorld::new("agent-timeout");
    let env = world.env(&env_file(&format!(
        "{}limits: {{agent_timeout: 1s}}\n",
        setup_key("true")
    )));
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", "echo started; sleep 60; echo never-printed"],
            ..Spec::default()
        },
    );
    assert!(
        run.done.elapsed < Duration::from_secs(15),
        "took {:?}: {run:#?}",
        run.done.elapsed
    );
    run.expect_code(124);
    assert_eq!(run.phase_text("agent"), ["started"], "{run:#?}");
    let result = run.result();
    assert_eq!(run.phase_names(), ["setup", "agent"], "{result:#}");
    assert_eq!(result["phases"][0]["timed_out"], false, "{result:#}");
    assert_eq!(result["phases"][1]["timed_out"], true, "{result:#}");
    assert_eq!(result["phases"][1]["exit_code"], 124, "{result:#}");
    assert_eq!(result["exit_code"], 124, "{result:#}");
}

// ---------------------------------------------------------------------------
// Automatic setup

#[test]
fn automatic_setup_says_what_it_detected() {
    require_root!();
    let mut world = RunWorld::new("auto");
    world.repo.commit(&[
        (
            "pyproject.toml",
            "[tool.poetry]\nname = \"proj\"\nversion = \"0.1.0\"\n",
        ),
        ("poetry.lock", "# empty lock file\n"),
    ]);
    let env = world.env(&env_file("env: {A: b}\n"));
    let run = world.run(
        &env,
        &Spec {
            agent: &["true"],
            ..Spec::default()
        },
    );
    let said = run
        .stderr()
        .lines()
        .find(|l| l.starts_with("tollgate: no `setup` in the environment:"))
        .unwrap_or_else(|| panic!("no detection message: {run:#?}"));
    assert!(said.contains("poetry"), "{said}");
    let log = run.expect_file("setup.log");
    assert!(
        log.contains("tollgate: auto-setup: poetry (poetry.lock): "),
        "{log}\n{run:#?}"
    );
    assert!(
        run.phase_text("setup")
            .iter()
            .any(|l| l.starts_with("tollgate: auto-setup: poetry (poetry.lock): ")),
        "{run:#?}"
    );
}

#[test]
fn automatic_setup_without_lock_files_does_nothing_and_the_agent_runs() {
    require_root!();
    let world = RunWorld::new("auto-none");
    let run = world.run(
        &world.env(&env_file("env: {A: b}\n")),
        &Spec {
            agent: &["sh", "-c", "echo AGENT_RAN"],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    assert!(
        run.stderr()
            .contains("tollgate: no `setup` in the environment:"),
        "{run:#?}"
    );
    assert_eq!(run.phase_text("agent"), ["AGENT_RAN"], "{run:#?}");
}

// ---------------------------------------------------------------------------
// The output dir and interruptions

#[test]
fn an_output_dir_that_is_not_empty_is_refused_and_left_alone() {
    require_root!();
    let world = RunWorld::new("out-not-empty");
    let out = world.dir.path("taken");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "earlier results\n").unwrap();
    let run = world.run(
        &world.env(&env_file(&setup_key("touch /tmp/ran"))),
        &Spec {
            agent: &["true"],
            out: Some(&out),
            ..Spec::default()
        },
    );
    run.expect_code(2);
    let stderr = run.stderr().trim();
    assert_eq!(stderr.lines().count(), 1, "{run:#?}");
    assert!(
        stderr.contains("--out") && stderr.contains("not empty"),
        "{stderr}"
    );
    assert!(!run.stdout().contains("━━━"), "a phase ran: {run:#?}");
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep.txt"], "the output dir was written to");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "earlier results\n"
    );

    // An empty directory is fine.
    let empty = world.dir.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let run = world.run(
        &world.env(&env_file(&setup_key("true"))),
        &Spec {
            agent: &["true"],
            out: Some(&empty),
            ..Spec::default()
        },
    );
    run.expect_code(0);
    assert!(empty.join("result.json").exists(), "{run:#?}");
}

#[test]
fn a_sigterm_stops_the_running_phase_and_leaves_nothing_behind() {
    require_root!();
    let world = RunWorld::new("interrupt");
    let id = unique();
    let running = world.start(
        &world.env(&env_file(&setup_key("true"))),
        &Spec {
            agent: &["sh", "-c", &format!("echo AGENT_STARTED; sleep 405.{id}")],
            ..Spec::default()
        },
    );
    let agent_log = running.out.join("agent.log");
    let started = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&agent_log).is_ok_and(|t| t.contains("AGENT_STARTED"))
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(running.pid()).unwrap());
    let asked = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let run = world.finish(running);
    assert!(started, "the agent never started: {run:#?}");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "took {:?} to stop: {run:#?}",
        asked.elapsed()
    );
    assert_ne!(run.code(), Some(0), "{run:#?}");
    assert!(pgrep(&format!(r"^sleep 405\.{id}$")).is_empty());
    let result = run.result();
    assert_eq!(run.phase_names(), ["setup", "agent"], "{result:#}");
    assert_eq!(result["phases"][1]["interrupted"], true, "{result:#}");
    assert_eq!(result["phases"][1]["timed_out"], false, "{result:#}");
}

// ---------------------------------------------------------------------------
// Leftovers

#[test]
fn nothing_is_left_behind() {
    require_root!();
    let world = RunWorld::new("leftovers");
    let id = unique();
    // Limits, so that each phase gets cgroups too.
    let limits = "limits: {memory: 1G, pids: 512}\n";
    // The agent reports its run's id (as its mounts show it) and its
    // cgroups, and leaves a process behind.
    let agent = |status: u8| {
        format!(
            "sleep 403.{id} &\n\
             echo \"RUNID $(grep -o 'runs/[0-9a-f-]*' /proc/self/mountinfo | head -1)\"\n\
             echo \"CGROUP $(grep -c ':/$' /proc/self/cgroup) $(grep -c tollgate- /proc/self/cgroup)\"\n\
             exit {status}"
        )
    };
    let cases = [
        ("success", setup_key("echo x > made.txt"), agent(0), true),
        ("failing agent", setup_key("true"), agent(1), true),
        (
            "failing setup",
            setup_key(&format!("sleep 404.{id} &\nexit 9")),
            agent(0),
            false,
        ),
    ];
    for (what, setup, agent, agent_runs) in &cases {
        // `World::run` checks the run dirs and mounts of the state dir.
        let run = world.run(
            &world.env(&env_file(&format!("{setup}{limits}"))),
            &Spec {
                agent: &["sh", "-c", agent],
                ..Spec::default()
            },
        );
        assert_ne!(run.code(), None, "{what}: {run:#?}");
        if *agent_runs {
            // The layers are idmapped mounts attached in the sandbox's own
            // scratch space: its mount table names no path of the host's
            // state dir (`World::run` checks the host has no mount left).
            assert_eq!(
                run.value("agent", "RUNID").unwrap_or_default(),
                "",
                "{what}: the sandbox sees its layers' host paths: {run:#?}"
            );
            // In a cgroup namespace rooted at its phase cgroups: every
            // hierarchy shows the agent at its root, no host path.
            let cgroups = run.expect_value("agent", "CGROUP");
            assert!(
                cgroups.ends_with(" 0") && !cgroups.starts_with("0 "),
                "{what}: the agent sees the host's cgroup tree: {run:#?}"
            );
        }
        let cgroups = cgroups_of(run.pid);
        assert!(cgroups.is_empty(), "{what}: cgroups left: {cgroups:?}");
        let survivors = pgrep(&format!(r"^sleep 40[34]\.{id}$"));
        assert!(survivors.is_empty(), "{what}: {survivors:?}");
    }
}

#[test]
fn the_state_dir_with_snapshots_and_layers_is_hidden_from_every_phase() {
    require_root!();
    let mut world = RunWorld::new("state-hidden");
    // Outside /tmp (a fresh tmpfs inside): the base shows /var/tmp.
    world.state = PathBuf::from(format!("/var/tmp/tollgate-test-state-{}", unique()));
    let _cleanup = RemoveOnDrop(world.state.clone());
    let state = world.state.display().to_string();
    let look = format!(
        "echo \"SEEN $(ls -A {state} 2>/dev/null | wc -l) $(cat {state}/cache/*/*/meta.json 2>/dev/null | wc -c)\""
    );
    let env = world.env(&env_file(&setup_key(&format!(
        "echo secret-ish > setup-file\n{look}"
    ))));
    // The first run publishes a snapshot; the second resumes it, so the
    // state dir holds cache/, runs/ and a live layer while both phases look.
    world
        .run(
            &env,
            &Spec {
                agent: &["true"],
                ..Spec::default()
            },
        )
        .expect_code(0);
    assert!(world.state.join("cache").is_dir(), "no snapshot was made");
    let run = world.run(
        &env,
        &Spec {
            agent: &["sh", "-c", &look],
            ..Spec::default()
        },
    );
    run.expect_code(0);
    assert_eq!(run.expect_value("agent", "SEEN"), "0 0", "{run:#?}");
}

/// Invariant 10: nothing a later phase can read holds a secret — not the
/// run's out dir (setup's log and audit records are there while the agent
/// runs), not the `from_file` source, not another run's out dir — and no
/// file outside the sandbox holds one at any moment of the run (the spec
/// reaches PID 1 through a memfd).
#[test]
fn no_secret_is_left_where_the_agent_or_the_host_could_read_it() {
    require_root!();
    let world = RunWorld::new("secret-nowhere");
    // Outside /tmp (a fresh tmpfs in every phase): the base shows /var/tmp.
    let outside = PathBuf::from(format!("/var/tmp/tollgate-test-{}", unique()));
    std::fs::create_dir_all(&outside).unwrap();
    let _cleanup = RemoveOnDrop(outside.clone());
    let upstream = Upstream::start();
    let port = upstream.port();
    let id = unique();
    let token = format!("tgsecret-env-{id}");
    let file_token = format!("tgsecret-file-{id}");
    let var = format!("TG_TEST_TOKEN_{id}");
    let token_file = outside.join("token.txt");
    std::fs::write(&token_file, &file_token).unwrap();
    let earlier_out = outside.join("earlier-out");
    let out = outside.join("out");
    let setup = format!(
        "curl -sS --max-time 10 -o /dev/null \"http://internet.test:{port}/login/$TOKEN/$FILETOKEN\"\n\
         echo \"LEAK $TOKEN $FILETOKEN\"\n\
         sleep 2\n"
    );
    let env = world.env(&env_file(&format!(
        "{}{INTERNET}cache: {{ttl: 0}}\nsecrets:\n  TOKEN: {{from_env: {var}}}\n  FILETOKEN: {{from_file: {}}}\n",
        setup_key(&setup),
        token_file.display()
    )));
    // A finished run whose out dir the next one's agent looks into.
    let spec = Spec {
        agent: &["true"],
        vars: &[(&var, &token)],
        out: Some(&earlier_out),
        ..Spec::default()
    };
    world.run(&env, &spec).expect_code(0);

    let (t, f) = (printf_octal(&token), printf_octal(&file_token));
    let agent = format!(
        r#"printf '{t}' > /tmp/n1; printf '{f}' > /tmp/n2
found() {{ grep -r -a -l -F -f /tmp/n1 "$@" 2>/dev/null; grep -r -a -l -F -f /tmp/n2 "$@" 2>/dev/null; }}
echo "OUT_LISTED $(ls -A {out} 2>/dev/null | wc -l)"
echo "OUT_FOUND $(found {out} | wc -l)"
echo "EARLIER_FOUND $(found {earlier} | wc -l)"
echo "SOURCE_BYTES $(cat {source} 2>/dev/null | wc -c)"
echo "OUTSIDE_FOUND $(found {outside} | wc -l)"
echo "PROC_FOUND $(found /proc/[0-9]*/environ /proc/[0-9]*/cmdline | wc -l)"
"#,
        out = out.display(),
        earlier = earlier_out.display(),
        source = token_file.display(),
        outside = outside.display(),
    );
    let mut started = world.start(
        &env,
        &Spec {
            agent: &["bash", "-c", &agent],
            vars: &[(&var, &token)],
            out: Some(&out),
            ..Spec::default()
        },
    );
    // While the run goes on, look for either value in every file the host
    // side could have put it in: its temp files, the state dir, the outputs.
    let mut holders = Vec::new();
    let watched = [std::env::temp_dir(), world.state.clone(), out.clone()];
    while started.running.child().try_wait().unwrap().is_none() {
        for dir in &watched {
            for value in [&token, &file_token] {
                holders.extend(files_containing(dir, value.as_str()));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = world.finish(started);
    run.expect_code(0);
    assert!(
        holders.is_empty(),
        "held a secret during the run: {holders:?}"
    );
    for key in [
        "OUT_LISTED",
        "OUT_FOUND",
        "EARLIER_FOUND",
        "SOURCE_BYTES",
        "OUTSIDE_FOUND",
        "PROC_FOUND",
    ] {
        assert_eq!(run.expect_value("agent", key), "0", "{key}: {run:#?}");
    }
    // Setup did use both values, and its records say so, blanked.
    assert!(upstream
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.contains(&token) && s.contains(&file_token)));
    let audit = run.audit();
    assert!(
        audit.iter().any(|r| r["path"] == "/login/***/***"),
        "{audit:#?}"
    );
}
