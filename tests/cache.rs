//! Cache snapshots end to end, as root (DESIGN.md "Cache snapshots" and
//! security invariant 8): a run that sets up publishes its setup layer as a
//! snapshot; a later run with the same key resumes it (maintenance instead
//! of setup, the task's revision checked out); any keyed input, the ttl or
//! `tollgate cache reset` makes the next run set up afresh; `cache gc`
//! removes what is expired or not whole; concurrent and killed runs never
//! leave a corrupt snapshot in use, nor anything else behind.
//!
//! Every test has its own git repo and its own `--state-dir`. Setup appends
//! a line to `setup-marker` in the workspace and to `/root/setup-runs`
//! outside it (both land in the setup layer, so a count of 1 in a later
//! phase's view says "setup ran once, for the layer this run sees");
//! maintenance appends to `maint-marker`. That setup (`SETUP`), the
//! maintenance and the agent that reports what it sees (`REPORT`) are at
//! the end of this file.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use common::*;

// ---------------------------------------------------------------------------
// Hits, misses and what a resumed run sees

#[test]
fn a_second_run_hits_the_cache_and_runs_maintenance_not_setup() {
    require_root!();
    let world = RunWorld::new("hit");
    let env = standard_env(&world, "web", "");
    let opts = Spec {
        agent: REPORTING,
        ..Spec::default()
    };

    let first = world.run_ok_with_result(&env, &opts);
    first.expect("miss", &["setup", "agent"]);
    let key = first.key();
    assert_built(&first, &key);
    assert_eq!(first.fact("pwd"), "/workspace/proj");
    assert_eq!(first.fact("setup-runs"), "1");
    assert_eq!(first.fact("setup-marker"), "1");
    assert_eq!(first.fact("maint-marker"), "0", "maintenance ran on a miss");
    assert_eq!(first.fact("deps"), "installed");
    // The snapshot: one directory named by the key, whole.
    assert_eq!(world.snapshot_keys("web"), vec![key.clone()]);
    let meta = world.meta("web", &key);
    assert_eq!(meta["key"], key.as_str());
    assert_eq!(meta["env"], "web");
    assert!(world
        .in_layer("web", &key, "workspace/proj/setup-marker")
        .is_file());
    assert!(world.in_layer("web", &key, "root/setup-runs").is_file());
    // The agent's writes are its own, never the snapshot's.
    assert!(!world
        .in_layer("web", &key, "workspace/proj/agent-file")
        .exists());

    let second = world.run_ok_with_result(&env, &opts);
    second.expect("hit", &["maintenance", "agent"]);
    assert_eq!(second.key(), key, "same inputs, same key");
    second.assert_says(&format!("tollgate: cache: hit (key {}, made ", short(&key)));
    second.assert_says("resuming it; setup skipped");
    second.assert_not_says("running setup");
    second.assert_not_says("published snapshot");
    assert_eq!(second.fact("setup-runs"), "1", "setup ran again on a hit");
    assert_eq!(second.fact("setup-marker"), "1");
    assert_eq!(second.fact("maint-marker"), "1", "maintenance did not run");
    assert_eq!(second.fact("deps"), "installed");
    assert_eq!(second.fact("pwd"), "/workspace/proj");
    // Maintenance wrote into its own layer, not into the snapshot.
    assert!(!world
        .in_layer("web", &key, "workspace/proj/maint-marker")
        .exists());
    assert_eq!(
        lines_in(&world.in_layer("web", &key, "root/setup-runs")),
        1,
        "the snapshot changed"
    );
    assert_eq!(world.snapshot_keys("web"), vec![key]);
    assert!(world.run_dirs().is_empty(), "left: {:?}", world.run_dirs());
}

#[test]
fn a_hit_checks_out_another_branch() {
    require_root!();
    fn opts<'a>(args: &'a [&'a str]) -> Spec<'a> {
        Spec {
            args,
            agent: REPORTING,
            ..Spec::default()
        }
    }
    let mut world = RunWorld::new("branch");
    let env = standard_env(&world, "web", "");

    let first = world.run_ok_with_result(&env, &opts(&[]));
    first.expect("miss", &["setup", "agent"]);
    assert_eq!(first.fact("head"), world.repo.main);
    assert_eq!(first.fact("feature"), "no");
    let key = first.key();

    let feature = world.run_ok_with_result(&env, &opts(&["--branch", "feature"]));
    feature.expect("hit", &["maintenance", "agent"]);
    assert_eq!(feature.key(), key, "the revision is not part of the key");
    assert_eq!(
        feature.fact("feature"),
        "yes",
        "feature.txt not checked out"
    );
    assert_eq!(feature.fact("head"), world.repo.feature);
    assert_eq!(feature.fact("branch"), "feature");
    assert_eq!(feature.result()["repo"]["branch"], "feature");
    assert_eq!(
        feature.result()["repo"]["commit"],
        world.repo.feature.as_str()
    );
    // What setup made (untracked) is kept across the checkout.
    assert_eq!(feature.fact("deps"), "installed");
    assert_eq!(feature.fact("setup-marker"), "1");
    assert_eq!(feature.fact("setup-runs"), "1");

    let first_sha = world.repo.first.clone();
    let commit = world.run_ok_with_result(&env, &opts(&["--commit", &first_sha]));
    commit.expect("hit", &["maintenance", "agent"]);
    assert_eq!(commit.fact("head"), first_sha);
    assert_eq!(commit.fact("feature"), "no");
    assert_eq!(commit.result()["repo"]["commit"], first_sha.as_str());
    assert!(
        commit.result()["repo"]["branch"].is_null(),
        "a commit is no branch: {:#}",
        commit.result()["repo"]
    );
    assert_eq!(commit.fact("deps"), "installed");
    // Each resume starts from the snapshot, not from the last resume.
    assert_eq!(commit.fact("maint-marker"), "1");

    // A commit made on the host after the snapshot reaches a resumed run.
    let later = world.repo.commit(&[("later.txt", "later\n")]);
    let resumed = world.run_ok_with_result(&env, &opts(&[]));
    resumed.expect("hit", &["maintenance", "agent"]);
    assert_eq!(resumed.fact("head"), later);
    assert_eq!(resumed.fact("later"), "yes");
    assert_eq!(resumed.fact("branch"), "main");
    assert_eq!(resumed.result()["repo"]["commit"], later.as_str());
    assert_eq!(resumed.fact("deps"), "installed");
}

#[test]
fn each_keyed_input_makes_a_new_key() {
    require_root!();
    let world = RunWorld::new("keys");
    let other = Scratch::new("cache-keys-other");
    let other_repo = Repo::create(&other.0);
    let altroot = world.dir.path("altroot");
    let secrets = "secrets:\n  TOKEN: {from_env: CACHE_TEST_TOKEN}\n";
    let yaml = |setup: &str, maintenance: &str, vars: &str, extra: &str| {
        env_yaml_with_vars(
            "web",
            setup,
            maintenance,
            vars,
            &format!("{secrets}{extra}"),
        )
    };
    let base_env = world.env_named("base.yaml", &yaml(SETUP, MAINTENANCE, "", ""));
    let token_one = [("CACHE_TEST_TOKEN", "value-one-9f8e7d")];
    let token_two = [("CACHE_TEST_TOKEN", "value-two-1a2b3c")];
    // No agent: setup or maintenance is all a key needs.
    let plain = Spec {
        vars: &token_one,
        ..Spec::default()
    };

    let baseline = world.run_ok_with_result(&base_env, &plain);
    baseline.expect("miss", &["setup"]);
    let key = baseline.key();
    let again = world.run_ok_with_result(&base_env, &plain);
    again.expect("hit", &["maintenance"]);
    assert_eq!(again.key(), key, "unchanged inputs must give the same key");

    let variants: Vec<(&str, PathBuf, Spec)> = vec![
        (
            "setup",
            world.env_named(
                "setup.yaml",
                &yaml(
                    &format!("{SETUP}echo changed >> setup-marker\n"),
                    MAINTENANCE,
                    "",
                    "",
                ),
            ),
            Spec {
                vars: &token_one,
                ..Spec::default()
            },
        ),
        (
            "maintenance",
            world.env_named(
                "maintenance.yaml",
                &yaml(SETUP, "echo 'other maintenance' >> maint-marker\n", "", ""),
            ),
            Spec {
                vars: &token_one,
                ..Spec::default()
            },
        ),
        (
            "env",
            world.env_named("env.yaml", &yaml(SETUP, MAINTENANCE, "NODE_ENV: test", "")),
            Spec {
                vars: &token_one,
                ..Spec::default()
            },
        ),
        (
            "a secret's value",
            base_env.clone(),
            Spec {
                vars: &token_two,
                ..Spec::default()
            },
        ),
        (
            "the repo",
            base_env.clone(),
            Spec {
                vars: &token_one,
                repo: Some(&other_repo.path),
                ..Spec::default()
            },
        ),
        (
            "base",
            world.env_named(
                "based.yaml",
                &yaml(
                    SETUP,
                    MAINTENANCE,
                    "",
                    &format!("base: {}\n", altroot.display()),
                ),
            ),
            Spec {
                vars: &token_one,
                bind_root_at: Some(&altroot),
                ..Spec::default()
            },
        ),
    ];
    let mut keys = vec![("baseline".to_owned(), key.clone())];
    for (what, env, opts) in &variants {
        let run = world.run_with_result(env, opts);
        assert_eq!(
            run.done.code,
            Some(0),
            "run with another {what} failed: {:#?}",
            run.done
        );
        assert_eq!(
            run.status(),
            "miss",
            "changing {what} must make the next run set up afresh: {}",
            run.done.stderr
        );
        assert_eq!(run.phase_names(), ["setup"], "changing {what}");
        let new = run.key();
        assert_built(&run, &new);
        if let Some((earlier, _)) = keys.iter().find(|(_, k)| *k == new) {
            panic!("changing {what} gave the same key as {earlier}: {new}");
        }
        keys.push((what.to_string(), new));
    }
    // The same base again: its key is stable, so the run hits.
    let (_, based_env, based_opts) = &variants[5];
    let based_again = world.run_ok_with_result(based_env, based_opts);
    based_again.expect("hit", &["maintenance"]);
    assert_eq!(based_again.key(), keys[6].1);
    // The baseline's snapshot was not replaced by any of them.
    let last = world.run_ok_with_result(&base_env, &plain);
    last.expect("hit", &["maintenance"]);
    assert_eq!(last.key(), key);
    assert_eq!(world.snapshot_keys("web").len(), keys.len());

    // Secret values are hashed into the key, never stored.
    for value in ["value-one-9f8e7d", "value-two-1a2b3c"] {
        let leaks = files_containing(&world.cache_dir(), value.as_bytes());
        assert!(leaks.is_empty(), "secret value stored in {leaks:?}");
    }
}

// ---------------------------------------------------------------------------
// Time to live

#[test]
fn a_snapshot_older_than_its_ttl_is_set_up_afresh() {
    require_root!();
    let world = RunWorld::new("ttl");
    let env = standard_env(&world, "web", "cache: {ttl: 3s}\n");

    let first = world.run_ok_with_result(&env, &Spec::default());
    first.expect("miss", &["setup"]);
    let key = first.key();
    assert_built(&first, &key);
    let made = world.meta("web", &key)["created"].as_u64().unwrap();
    assert_eq!(world.meta("web", &key)["ttl"], 3);

    wait_until_older_than(made, 3);
    let listed = world.cache_list();
    let row = listed
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("web not listed:\n{listed}"));
    assert!(row.contains(short(&key)), "{listed}");
    assert!(row.contains("expired"), "{listed}");

    // No agent, so the fresh snapshot is seconds old when gc looks at it.
    let second = world.run_ok_with_result(&env, &Spec::default());
    second.expect("miss", &["setup"]);
    assert_eq!(second.key(), key, "age is not a keyed input");
    assert_built(&second, &key);
    second.assert_not_says("cache: hit");
    // The expired snapshot was replaced by a fresh setup, not built upon.
    assert_eq!(world.snapshot_keys("web"), vec![key.clone()]);
    let remade = world.meta("web", &key)["created"].as_u64().unwrap();
    assert!(remade >= made + 3, "not remade: {made} then {remade}");
    assert_eq!(
        lines_in(&world.in_layer("web", &key, "root/setup-runs")),
        1,
        "the fresh layer holds an earlier setup's writes"
    );
    assert_eq!(
        lines_in(&world.in_layer("web", &key, "workspace/proj/setup-marker")),
        1
    );

    // Nothing is expired any more: the run replaced what was.
    let gc = world.cache_gc();
    assert!(gc.contains("gc: removed 0 snapshot(s)"), "{gc}");
    assert_eq!(world.snapshot_keys("web"), vec![key.clone()]);
    let listed = world.cache_list();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.trim_end().ends_with("ready")),
        "{listed}"
    );
}

#[test]
fn a_zero_ttl_disables_the_cache() {
    require_root!();
    let world = RunWorld::new("ttl0");
    let env = standard_env(&world, "web", "cache: {ttl: 0}\n");
    let opts = Spec {
        agent: REPORTING,
        ..Spec::default()
    };
    for _ in 0..2 {
        let run = world.run_ok_with_result(&env, &opts);
        run.expect("disabled", &["setup", "agent"]);
        run.key();
        run.assert_says("tollgate: cache: disabled (cache.ttl: 0)");
        run.assert_not_says("published snapshot");
        assert_eq!(run.fact("setup-runs"), "1");
        assert_eq!(run.fact("maint-marker"), "0");
        assert!(
            !world.cache_dir().join("web").exists(),
            "a snapshot directory was created with ttl 0"
        );
    }
    let listed = world.cache_list();
    assert!(listed.starts_with("no snapshots"), "{listed}");
}

// ---------------------------------------------------------------------------
// cache reset and gc

#[test]
fn reset_removes_only_that_environment() {
    require_root!();
    let world = RunWorld::new("reset");
    // Two environments that differ in their name only.
    let alpha = standard_env(&world, "alpha", "");
    let beta = standard_env(&world, "beta", "");
    let alpha_key = world.run_ok_with_result(&alpha, &Spec::default()).key();
    let beta_key = world.run_ok_with_result(&beta, &Spec::default()).key();
    assert_eq!(world.snapshot_keys("alpha"), vec![alpha_key.clone()]);
    assert_eq!(world.snapshot_keys("beta"), vec![beta_key.clone()]);

    let reset = world.cache_reset(&alpha);
    assert!(
        reset.contains(&format!("removed alpha/{alpha_key}")),
        "{reset}"
    );
    assert!(
        reset.contains("reset: removed 1 snapshot(s), freed "),
        "{reset}"
    );
    assert!(world.snapshot_keys("alpha").is_empty());
    assert_eq!(world.snapshot_keys("beta"), vec![beta_key.clone()]);
    assert!(world
        .in_layer("beta", &beta_key, "workspace/proj/setup-marker")
        .is_file());
    let listed = world.cache_list();
    assert!(!listed.lines().any(|l| l.starts_with("alpha ")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("beta ")), "{listed}");

    let alpha_again = world.run_ok_with_result(&alpha, &Spec::default());
    alpha_again.expect("miss", &["setup"]);
    assert_built(&alpha_again, &alpha_key);
    world
        .run_ok_with_result(&beta, &Spec::default())
        .expect("hit", &["maintenance"]);
}

#[test]
fn gc_removes_expired_and_incomplete_snapshots() {
    require_root!();
    let world = RunWorld::new("gc");
    let short_lived = standard_env(&world, "short", "cache: {ttl: 1s}\n");
    let long_lived = standard_env(&world, "long", "cache: {ttl: 1h}\n");
    let short_key = world
        .run_ok_with_result(&short_lived, &Spec::default())
        .key();
    let long_key = world
        .run_ok_with_result(&long_lived, &Spec::default())
        .key();

    // Not whole: a layer without meta.json; a meta.json that does not parse.
    let no_meta = "0".repeat(64);
    let layer = world.snapshot("long", &no_meta).join("layer");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(layer.join("half-written"), vec![b'x'; 5000]).unwrap();
    let bad_meta = "f".repeat(64);
    std::fs::create_dir_all(world.snapshot("long", &bad_meta).join("layer")).unwrap();
    std::fs::write(
        world.snapshot("long", &bad_meta).join("meta.json"),
        "{\"env\": \"lo",
    )
    .unwrap();

    let made = world.meta("short", &short_key)["created"].as_u64().unwrap();
    wait_until_older_than(made, 1);
    let listed = world.cache_list();
    for (env, key, state) in [
        ("short", &short_key, "expired"),
        ("long", &long_key, "ready"),
        ("long", &no_meta, "incomplete"),
        ("long", &bad_meta, "incomplete"),
    ] {
        assert!(
            listed.lines().any(|l| l.starts_with(&format!("{env} "))
                && l.contains(short(key))
                && l.contains(state)),
            "{env}/{key} should be listed as {state}:\n{listed}"
        );
    }

    let gc = world.cache_gc();
    for removed in [
        format!("removed short/{short_key}"),
        format!("removed long/{no_meta}"),
        format!("removed long/{bad_meta}"),
    ] {
        assert!(
            gc.lines().any(|l| l == removed),
            "{removed:?} not in:\n{gc}"
        );
    }
    assert!(gc.contains("gc: removed 3 snapshot(s), freed "), "{gc}");
    assert!(!gc.contains("freed 0 B"), "{gc}");
    assert!(world.snapshot_keys("short").is_empty());
    assert_eq!(world.snapshot_keys("long"), vec![long_key.clone()]);

    // The live one is untouched and still used.
    world
        .run_ok_with_result(&long_lived, &Spec::default())
        .expect("hit", &["maintenance"]);
    let gc = world.cache_gc();
    assert!(gc.contains("gc: removed 0 snapshot(s)"), "{gc}");
}

#[test]
fn reset_and_gc_keep_a_snapshot_that_a_run_is_using() {
    require_root!();
    let world = RunWorld::new("inuse");
    let env = standard_env(&world, "web", "cache: {ttl: 3s}\n");
    let key = world.run_ok_with_result(&env, &Spec::default()).key();
    let made = world.meta("web", &key)["created"].as_u64().unwrap();

    // A resumed run whose agent reads the snapshot's files after a while.
    let agent: &[&str] = &["bash", "-c", "sleep 8; cat deps/dep.txt /root/setup-runs"];
    let running = world.start(
        &env,
        &Spec {
            agent,
            ..Spec::default()
        },
    );
    let agent_started = eventually(Duration::from_secs(60), || {
        world
            .run_dirs()
            .iter()
            .any(|id| world.runs_dir().join(id).join("agent").exists())
    });
    assert!(agent_started, "the agent phase did not start");
    let listed = world.cache_list();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.trim_end().ends_with("in use")),
        "{listed}"
    );

    let reset = world.cache_reset(&env);
    assert!(
        reset.contains(&format!("kept web/{key}: a run is using it")),
        "{reset}"
    );
    assert!(reset.contains("reset: removed 0 snapshot(s)"), "{reset}");
    assert_eq!(world.snapshot_keys("web"), vec![key.clone()]);

    wait_until_older_than(made, 3);
    let gc = world.cache_gc();
    assert!(
        gc.contains(&format!("kept web/{key}: a run is using it")),
        "{gc}"
    );
    assert!(gc.contains("gc: removed 0 snapshot(s)"), "{gc}");
    assert!(world
        .in_layer("web", &key, "workspace/proj/deps/dep.txt")
        .is_file());

    // A run now: the snapshot is expired but in use, so it sets up afresh
    // and runs uncached; the snapshot stays as it is.
    let meanwhile = world.run_ok_with_result(
        &env,
        &Spec {
            agent: REPORTING,
            ..Spec::default()
        },
    );
    meanwhile.expect("miss", &["setup", "agent"]);
    assert_built_not_published(&meanwhile, &key);
    meanwhile.assert_says(
        "tollgate: cache: an expired snapshot of this key is still in use: not replaced; this run continues uncached",
    );
    assert_eq!(meanwhile.fact("setup-runs"), "1");
    assert_eq!(meanwhile.fact("deps"), "installed");
    assert_eq!(world.snapshot_keys("web"), vec![key.clone()]);
    assert_eq!(world.meta("web", &key)["created"], made);
    assert_eq!(lines_in(&world.in_layer("web", &key, "root/setup-runs")), 1);

    let run = RunOut::finish_with_result(running);
    assert_eq!(run.done.code, Some(0), "{:#?}", run.done);
    run.expect("hit", &["maintenance", "agent"]);
    let log = std::fs::read_to_string(run.out.join("agent.log")).unwrap();
    assert!(log.contains("installed"), "the layer went away: {log}");

    // No one uses it now: gc removes the expired snapshot.
    let gc = world.cache_gc();
    assert!(gc.contains(&format!("removed web/{key}")), "{gc}");
    assert!(gc.contains("gc: removed 1 snapshot(s)"), "{gc}");
    assert!(world.snapshot_keys("web").is_empty());
}

// ---------------------------------------------------------------------------
// Invariant 8: atomic publication, nothing partial used, concurrent runs

#[test]
fn a_corrupt_or_partial_snapshot_is_never_used() {
    require_root!();
    let world = RunWorld::new("corrupt");
    let env = standard_env(&world, "web", "");
    let key = world.run_ok_with_result(&env, &Spec::default()).key();
    let meta_path = world.snapshot("web", &key).join("meta.json");
    let setup_runs = world.in_layer("web", &key, "root/setup-runs");

    // meta.json cut short.
    let text = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(&meta_path, &text[..text.len() / 2]).unwrap();
    let run = world.run_ok_with_result(&env, &Spec::default());
    run.expect("miss", &["setup"]);
    assert_built(&run, &key);
    assert_eq!(world.meta("web", &key)["key"], key.as_str());
    assert_eq!(lines_in(&setup_runs), 1, "built on the corrupt snapshot");

    // meta.json whole, the layer gone.
    std::fs::remove_dir_all(world.snapshot("web", &key).join("layer")).unwrap();
    let run = world.run_ok_with_result(&env, &Spec::default());
    run.expect("miss", &["setup"]);
    assert_built(&run, &key);
    assert_eq!(lines_in(&setup_runs), 1);

    // meta.json of another key.
    let mut meta = world.meta("web", &key);
    meta["key"] = Value::from("1".repeat(64));
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let run = world.run_ok_with_result(&env, &Spec::default());
    run.expect("miss", &["setup"]);
    assert_built(&run, &key);
    assert_eq!(world.meta("web", &key)["key"], key.as_str());

    // Whole again: used.
    world
        .run_ok_with_result(&env, &Spec::default())
        .expect("hit", &["maintenance"]);
    assert_eq!(world.snapshot_keys("web"), vec![key]);
}

#[test]
fn a_failed_setup_publishes_nothing() {
    require_root!();
    let world = RunWorld::new("failed");
    // Setup fails on branch `broken` only: the next run, on main, has the
    // same key.
    world.repo.branch_with("broken", "BROKEN");
    let setup = format!("{SETUP}if [ -e BROKEN ]; then exit 3; fi\n");
    let env = world.env_named("web.yaml", &env_yaml("web", &setup, MAINTENANCE, ""));

    let failed = world.run_with_result(
        &env,
        &Spec {
            args: &["--branch", "broken"],
            agent: REPORTING,
            ..Spec::default()
        },
    );
    assert_ne!(failed.done.code, Some(0), "{:#?}", failed.done);
    assert_eq!(failed.status(), "miss");
    assert_eq!(failed.phases(), [("setup".to_owned(), 3)]);
    let key = failed.key();
    assert_built_not_published(&failed, &key);
    assert!(
        world.snapshot_keys("web").is_empty(),
        "{:?}",
        world.snapshot_keys("web")
    );
    assert!(world.run_dirs().is_empty(), "left: {:?}", world.run_dirs());

    let next = world.run_ok_with_result(
        &env,
        &Spec {
            agent: REPORTING,
            ..Spec::default()
        },
    );
    next.expect("miss", &["setup", "agent"]);
    assert_eq!(next.key(), key);
    assert_built(&next, &key);
    assert_eq!(next.fact("setup-runs"), "1");
    assert_eq!(lines_in(&world.in_layer("web", &key, "root/setup-runs")), 1);
}

#[test]
fn two_concurrent_runs_both_succeed_and_one_builds() {
    require_root!();
    let world = RunWorld::new("concurrent");
    let env = world.env_named(
        "web.yaml",
        &env_yaml("web", &format!("{SETUP}sleep 2\n"), MAINTENANCE, ""),
    );
    let opts = Spec {
        agent: REPORTING,
        ..Spec::default()
    };

    // The second starts while the first is provably in its setup.
    let first = world.start(&env, &opts);
    let in_setup = eventually(Duration::from_secs(60), || {
        !setup_layers_holding(&world, "setup-marker").is_empty()
    });
    assert!(in_setup, "the first run's setup did not start");
    let second = RunOut::finish_with_result(world.start(&env, &opts));
    let first = RunOut::finish_with_result(first);

    for run in [&first, &second] {
        assert_eq!(run.done.code, Some(0), "{:#?}", run.done);
        run.expect("miss", &["setup", "agent"]);
        assert_eq!(run.fact("setup-runs"), "1");
        assert_eq!(run.fact("deps"), "installed");
    }
    let key = first.key();
    assert_eq!(second.key(), key);
    assert_built(&first, &key);
    second.assert_says(&format!(
        "tollgate: cache: miss (key {}), and another run is building this snapshot: this run sets up without caching",
        short(&key)
    ));
    second.assert_not_says("published snapshot");

    assert_eq!(world.snapshot_keys("web"), vec![key.clone()]);
    assert_eq!(world.meta("web", &key)["key"], key.as_str());
    assert_eq!(
        lines_in(&world.in_layer("web", &key, "root/setup-runs")),
        1,
        "two setups wrote into one snapshot"
    );
    assert!(world.run_dirs().is_empty(), "left: {:?}", world.run_dirs());

    let third = world.run_ok_with_result(&env, &opts);
    third.expect("hit", &["maintenance", "agent"]);
    assert_eq!(third.fact("setup-runs"), "1");
    assert_eq!(third.fact("maint-marker"), "1");
}

#[test]
fn two_runs_started_at_once_publish_one_snapshot() {
    require_root!();
    let world = RunWorld::new("atonce");
    let env = world.env_named(
        "web.yaml",
        &env_yaml("web", &format!("{SETUP}sleep 2\n"), MAINTENANCE, ""),
    );
    let opts = Spec {
        agent: REPORTING,
        ..Spec::default()
    };
    let a = world.start(&env, &opts);
    let b = world.start(&env, &opts);
    let runs = [RunOut::finish_with_result(a), RunOut::finish_with_result(b)];

    let key = runs[0].key();
    let mut builders = 0;
    let mut publications = 0;
    for run in &runs {
        assert_eq!(run.done.code, Some(0), "{:#?}", run.done);
        assert_eq!(run.key(), key);
        assert_eq!(run.fact("setup-runs"), "1");
        assert_eq!(run.fact("deps"), "installed");
        let built = run.says("running setup; its result is cached");
        let uncached = run.says("another run is building this snapshot");
        let hit = run.status() == "hit";
        assert_eq!(
            [built, uncached, hit].iter().filter(|b| **b).count(),
            1,
            "a run builds, sets up uncached, or hits: {}",
            run.done.stderr
        );
        if hit {
            run.expect("hit", &["maintenance", "agent"]);
        } else {
            run.expect("miss", &["setup", "agent"]);
        }
        builders += usize::from(built);
        publications += run.done.stderr.matches("published snapshot").count();
    }
    assert_eq!(builders, 1, "exactly one run builds");
    assert_eq!(publications, 1, "exactly one publication");
    assert_eq!(world.snapshot_keys("web"), vec![key.clone()]);
    assert_eq!(lines_in(&world.in_layer("web", &key, "root/setup-runs")), 1);
    world
        .run_ok_with_result(&env, &Spec::default())
        .expect("hit", &["maintenance"]);
}

#[test]
fn a_run_killed_during_setup_leaves_no_usable_snapshot() {
    require_root!();
    let world = RunWorld::new("killed");
    // Setup sleeps on branch `slow` only: the revision is not keyed, so
    // the next run (on main) has the same key and a quick setup.
    world.repo.branch_with("slow", "SLOW");
    let token = unique_token("sleeper");
    let setup = format!("{SETUP}if [ -e SLOW ]; then exec -a {token} sleep 30; fi\n");
    let env = world.env_named(
        "web.yaml",
        &env_yaml("web", &setup, MAINTENANCE, "limits: {pids: 512}\n"),
    );

    let killed = world.start(
        &env,
        &Spec {
            args: &["--branch", "slow"],
            agent: REPORTING,
            ..Spec::default()
        },
    );
    let killed_pid = killed.pid();
    let sleeping = eventually(Duration::from_secs(60), || {
        !processes_with(&token).is_empty()
    });
    assert!(sleeping, "the slow setup did not start");
    let own_dirs = |world: &RunWorld| -> Vec<String> {
        world
            .run_dirs()
            .into_iter()
            .filter(|id| id.starts_with(&format!("{killed_pid}-")))
            .collect()
    };
    assert_eq!(own_dirs(&world).len(), 1, "runs: {:?}", world.run_dirs());
    // What the killed run has on the host besides its layers; the checks
    // after the next run are not empty ones.
    let had_cgroups = !cgroups_of(killed_pid).is_empty();
    // The sandbox's run directory (scratch mount point, control socket) is
    // gone as soon as PID 1 has pivoted: a SIGKILL cannot leave it.
    assert_eq!(run_dirs_of(killed_pid), Vec::<PathBuf>::new());
    let done = killed.running.kill();
    assert_eq!(done.code, None, "tollgate was not killed: {done:#?}");

    // Its sandbox died with it (parent-death signal).
    let gone = eventually(Duration::from_secs(5), || processes_with(&token).is_empty());
    assert!(
        gone,
        "setup outlived its tollgate: {:?}",
        processes_with(&token)
    );
    // Nothing was published, nothing is listed.
    assert!(
        world.snapshot_keys("web").is_empty(),
        "{:?}",
        world.snapshot_keys("web")
    );
    assert_eq!(
        own_dirs(&world).len(),
        1,
        "a killed run cannot remove its layers"
    );
    let listed = world.cache_list();
    assert!(listed.starts_with("no snapshots"), "{listed}");
    // Sweeps leave what looks abandoned alone for a minute (its owner may
    // be in a PID namespace we cannot see into): let that minute pass.
    for dir in cgroups_of(killed_pid) {
        age(&dir);
    }

    let next = world.run_ok_with_result(
        &env,
        &Spec {
            agent: REPORTING,
            ..Spec::default()
        },
    );
    next.expect("miss", &["setup", "agent"]);
    let key = next.key();
    // It builds: the killed run's build lock died with it.
    assert_built(&next, &key);
    assert_eq!(next.fact("setup-runs"), "1");
    assert_eq!(next.fact("setup-marker"), "1");
    assert_eq!(next.fact("head"), world.repo.main);
    assert_eq!(world.snapshot_keys("web"), vec![key.clone()]);
    assert_eq!(lines_in(&world.in_layer("web", &key, "root/setup-runs")), 1);

    // What the killed run left is gone after the next one.
    assert!(
        own_dirs(&world).is_empty(),
        "abandoned: {:?}",
        world.run_dirs()
    );
    assert!(world.run_dirs().is_empty(), "left: {:?}", world.run_dirs());
    if !had_cgroups {
        eprintln!("note: no phase cgroups on this host (limits not enforced): not checked");
    }
    assert_eq!(cgroups_of(killed_pid), Vec::<PathBuf>::new());
    assert_eq!(run_dirs_of(killed_pid), Vec::<PathBuf>::new());
    assert_eq!(
        host_mounts_mentioning(&world.state.to_string_lossy()),
        Vec::<String>::new()
    );
}

#[test]
fn nothing_is_left_behind() {
    require_root!();
    let world = RunWorld::new("leftovers");
    let token = unique_token("straggler");
    let env = standard_env(&world, "web", "limits: {memory: 512M, pids: 512}\n");
    // The agent leaves a process behind and says which cgroups it is in.
    let script = format!("(exec -a {token} sleep 300) & cat /proc/self/cgroup");
    let agent: &[&str] = &["bash", "-c", &script];
    let opts = Spec {
        agent,
        ..Spec::default()
    };
    let state = world.state.to_string_lossy().into_owned();

    for expected in ["miss", "hit"] {
        let run = world.run_ok_with_result(&env, &opts);
        assert_eq!(run.status(), expected, "{}", run.done.stderr);
        let pid = run.pid;
        // The phase had cgroups of its own (the host enforces limits), and
        // a cgroup namespace rooted at them: inside, every hierarchy shows
        // the agent at its root, never the host's tree.
        let log = std::fs::read_to_string(run.out.join("agent.log")).unwrap();
        let enforced = run.result()["warnings"]
            .as_array()
            .is_some_and(|w| w.is_empty());
        if enforced {
            let placed: Vec<&str> = log.lines().filter(|l| l.contains(':')).collect();
            assert!(!placed.is_empty(), "no cgroups listed:\n{log}");
            assert!(
                placed.iter().all(|l| l.ends_with(":/")),
                "the agent sees the host's cgroup tree:\n{log}"
            );
        }
        assert!(
            world.run_dirs().is_empty(),
            "{expected}: left {:?}",
            world.run_dirs()
        );
        assert_eq!(host_mounts_mentioning(&state), Vec::<String>::new());
        assert_eq!(
            host_mounts_mentioning(&format!("tollgate-run-{pid}-")),
            Vec::<String>::new()
        );
        assert_eq!(cgroups_of(pid), Vec::<PathBuf>::new(), "{expected}");
        assert_eq!(run_dirs_of(pid), Vec::<PathBuf>::new(), "{expected}");
        assert_eq!(processes_with(&token), Vec::<u32>::new(), "{expected}");
    }
    // Publication and removal leave no staging or trash behind.
    assert_eq!(world.snapshot_keys("web").len(), 1);
    world.cache_reset(&env);
    let trash: Vec<_> = std::fs::read_dir(world.cache_dir().join(".trash"))
        .map(|e| e.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(trash.is_empty(), "trash left: {trash:?}");
    assert!(world.snapshot_keys("web").is_empty());
}

// ---------------------------------------------------------------------------
// What every test here runs, and helpers of this file

/// The setup every test uses (with extra lines appended by some).
const SETUP: &str = "\
echo 'setup ran' >> setup-marker
echo run >> /root/setup-runs
mkdir -p deps
echo installed > deps/dep.txt
";

/// The maintenance every test uses.
const MAINTENANCE: &str = "echo 'maintenance ran' >> maint-marker\n";

/// The agent: prints what it sees as `name=value` lines.
const REPORT: &str = r#"
fact() { printf '%s=%s\n' "$1" "$2"; }
fact setup-runs "$(cat /root/setup-runs 2>/dev/null | wc -l)"
fact setup-marker "$(cat setup-marker 2>/dev/null | wc -l)"
fact maint-marker "$(cat maint-marker 2>/dev/null | wc -l)"
fact deps "$(cat deps/dep.txt 2>/dev/null)"
fact feature "$(test -f feature.txt && echo yes || echo no)"
fact later "$(test -f later.txt && echo yes || echo no)"
fact head "$(git rev-parse HEAD)"
fact branch "$(git rev-parse --abbrev-ref HEAD)"
fact pwd "$(pwd)"
echo 'the agent was here' > agent-file
"#;

/// The agent that reports what it sees.
const REPORTING: &[&str] = &["bash", "-c", REPORT];

/// The standard environment (SETUP, MAINTENANCE) called `name`.
fn standard_env(world: &RunWorld, name: &str, extra: &str) -> PathBuf {
    world.env_named(
        &format!("{name}.yaml"),
        &env_yaml(name, SETUP, MAINTENANCE, extra),
    )
}

/// The stderr of a run that built (and published) the snapshot of `key`.
fn assert_built(run: &RunOut, key: &str) {
    run.assert_says(&format!(
        "tollgate: cache: miss (key {}): running setup; its result is cached for",
        short(key)
    ));
    run.assert_says(&format!(
        "tollgate: cache: published snapshot {}",
        short(key)
    ));
}

/// The stderr of a run that held the build lock of `key` but did not
/// publish.
fn assert_built_not_published(run: &RunOut, key: &str) {
    run.assert_says(&format!(
        "tollgate: cache: miss (key {}): running setup; its result is cached for",
        short(key)
    ));
    run.assert_not_says("published snapshot");
}

/// How many lines the file at `path` holds.
fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .count()
}

/// Setup layers of runs in progress that hold `file` in the workspace.
fn setup_layers_holding(world: &RunWorld, file: &str) -> Vec<PathBuf> {
    world
        .run_dirs()
        .into_iter()
        .map(|id| {
            world
                .runs_dir()
                .join(id)
                .join("setup/upper/workspace")
                .join(REPO_NAME)
                .join(file)
        })
        .filter(|path| path.exists())
        .collect()
}

/// Seconds since the epoch, as meta.json records them.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sleeps until a snapshot made at `created` (seconds since the epoch, as
/// meta.json records it) is at least `ttl` seconds old by tollgate's count.
fn wait_until_older_than(created: u64, ttl: u64) {
    let ok = eventually(Duration::from_secs(ttl + 10), || {
        now_secs() >= created + ttl
    });
    assert!(ok, "the clock did not move past {created} + {ttl}");
}
