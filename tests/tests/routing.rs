//! The filter on real Envoy: which version each user gets, and that it never changes.

use std::collections::BTreeSet;

use anyhow::Result;
use canary_contract::{FilterConfig, RequestMatch, RolloutConfig, Version};
use canary_e2e::bootstrap::FilterBuild;
use canary_e2e::client::{http_client, send_all, Probe};
use canary_e2e::envoy;
use canary_e2e::rig::{CanaryRig, RigOptions};

const CONCURRENCY: usize = 32;

fn rollout_on_prefix(name: &str, prefix: &str, salt: &str, weight_bp: u32) -> RolloutConfig {
    let mut r = RolloutConfig::new(name, weight_bp);
    r.request_match = RequestMatch {
        hosts: Vec::new(),
        path_prefix: Some(prefix.to_string()),
    };
    r.salt = Some(salt.to_string());
    r
}

fn config(rollouts: Vec<RolloutConfig>) -> FilterConfig {
    FilterConfig::new(rollouts)
}

fn version_of(served_by: Option<&str>) -> Option<Version> {
    match served_by {
        Some("stable") => Some(Version::Stable),
        Some("canary") => Some(Version::Canary),
        _ => None,
    }
}

/// Issue tests 1, 2 and 4: one Envoy, four rollouts sharing a salt at 1%, 5%, 25% and 50%
/// (one per path prefix, so one process serves every weight), 20,000 users each.
async fn envoy_agrees_with_contract_at_every_weight_and_ramp_is_monotone(
    build: FilterBuild,
) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let weights = [100u32, 500, 2500, 5000];
    let rollouts: Vec<_> = weights
        .iter()
        .map(|w| rollout_on_prefix(&format!("ramp-{w}"), &format!("/w{w}/"), "ramp", *w))
        .collect();
    let config = config(rollouts.clone());
    let rig = CanaryRig::start(
        &config,
        RigOptions {
            concurrency: 2,
            ..RigOptions::with_build(build)
        },
    )
    .await?;
    let client = http_client(CONCURRENCY)?;
    let users: Vec<String> = (0..20_000).map(|i| format!("user-{i:05}")).collect();

    let mut canary_sets: Vec<BTreeSet<&str>> = Vec::new();
    for (rollout, weight) in rollouts.iter().zip(weights) {
        let probes: Vec<Probe> = users
            .iter()
            .map(|u| Probe::user(rig.base(), &format!("/w{weight}/item"), u))
            .collect();
        let answers = send_all(&client, &probes, CONCURRENCY).await?;
        let mut disagreements = Vec::new();
        let mut canary = BTreeSet::new();
        for (user, answer) in users.iter().zip(&answers) {
            let expected = rollout.version_for_key(user);
            let got = version_of(answer.served_by.as_deref());
            if got != Some(expected) {
                disagreements.push((user, expected, answer.clone()));
            }
            if got == Some(Version::Canary) {
                canary.insert(user.as_str());
            }
        }
        assert!(
            disagreements.is_empty(),
            "weight {weight}bp: {} of {} users routed differently from the contract, e.g. {:?}",
            disagreements.len(),
            users.len(),
            &disagreements[..disagreements.len().min(3)]
        );
        let share_pp = 100.0 * canary.len() as f64 / users.len() as f64;
        let want_pp = f64::from(weight) / 100.0;
        assert!(
            (share_pp - want_pp).abs() <= 1.0,
            "weight {weight}bp: canary share {share_pp:.2}% is not within 1pp of {want_pp}%"
        );
        eprintln!("weight {weight}bp: canary share {share_pp:.2}% (20,000 users, all agree)");
        canary_sets.push(canary);
    }
    for pair in canary_sets.windows(2) {
        let lost: Vec<_> = pair[0].difference(&pair[1]).take(3).collect();
        assert!(
            lost.is_empty(),
            "users on canary at a lower weight but not at the next: {lost:?}"
        );
    }
    Ok(())
}

/// Issue test 3: 2,000 users × 20 requests, alternating between two Envoys with two workers
/// each; every user sees one version, the one the contract computes.
async fn users_are_sticky_across_envoys_and_workers(build: FilterBuild) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let rollout = rollout_on_prefix("sticky", "/", "sticky", 3000);
    let rig = CanaryRig::start(
        &config(vec![rollout.clone()]),
        RigOptions {
            envoys: 2,
            concurrency: 2,
            ..RigOptions::with_build(build)
        },
    )
    .await?;
    let client = http_client(CONCURRENCY)?;
    let users: Vec<String> = (0..2_000).map(|i| format!("sticky-{i}")).collect();
    let probes: Vec<Probe> = (0..20)
        .flat_map(|round| {
            let rig = &rig;
            users
                .iter()
                .enumerate()
                .map(move |(i, u)| Probe::user(&rig.bases[(i + round) % 2], "/", u))
        })
        .collect();
    let answers = send_all(&client, &probes, CONCURRENCY).await?;
    for (user_index, user) in users.iter().enumerate() {
        let expected = rollout.version_for_key(user);
        let seen: BTreeSet<Option<Version>> = answers
            .iter()
            .skip(user_index)
            .step_by(users.len())
            .map(|a| version_of(a.served_by.as_deref()))
            .collect();
        assert_eq!(
            seen,
            BTreeSet::from([Some(expected)]),
            "{user} saw {seen:?} over 20 requests, expected only {expected:?}"
        );
    }
    // Both workers of both Envoys must have taken connections, or the test proved less
    // than it claims.
    for envoy in &rig.envoys {
        for worker in 0..2 {
            let name = format!("listener.ingress.worker_{worker}.downstream_cx_total");
            let cx = envoy.counter(&name).await?.unwrap_or(0);
            assert!(
                cx > 0,
                "{name} = {cx}: worker {worker} took no connections\n{}",
                envoy
                    .admin_text("/stats?filter=downstream_cx_total")
                    .await?
            );
        }
    }
    Ok(())
}

/// Issue test 5: client-sent routing headers are ignored; the force header works only where
/// configured; the deny list beats everything, the allow list beats the force header.
async fn clients_cannot_pick_a_version_unless_allowed(build: FilterBuild) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let with_lists = |mut r: RolloutConfig| {
        r.allow = BTreeSet::from(["tester".to_string()]);
        r.deny = BTreeSet::from(["vip".to_string()]);
        r
    };
    let with_force = |mut r: RolloutConfig| {
        r.force_header = Some("x-canary-user".to_string());
        r
    };
    let rollouts = vec![
        with_lists(rollout_on_prefix("none", "/none/", "s", 0)),
        with_lists(rollout_on_prefix("all", "/all/", "s", 10_000)),
        with_lists(with_force(rollout_on_prefix(
            "forced-none",
            "/forced-none/",
            "s",
            0,
        ))),
        with_lists(with_force(rollout_on_prefix(
            "forced-all",
            "/forced-all/",
            "s",
            10_000,
        ))),
    ];
    let rig = CanaryRig::start(&config(rollouts), RigOptions::with_build(build)).await?;
    let client = http_client(4)?;
    let base = rig.base();
    // (what, probe, expected version, routing header the upstream must see, force header seen)
    let cases: Vec<(&str, Probe, &str, &str)> = vec![
        (
            "spoofed canary at 0%",
            Probe::user(base, "/none/", "u1").header("x-canary-version", "canary"),
            "stable",
            "-",
        ),
        (
            "spoofed stable at 100%",
            Probe::user(base, "/all/", "u1").header("x-canary-version", "stable"),
            "canary",
            "-",
        ),
        (
            "two spoofed headers at 0%",
            Probe::user(base, "/none/", "u1")
                .header("x-canary-version", "canary")
                .header("x-canary-version", "canary"),
            "stable",
            "-",
        ),
        (
            "spoofed header, no user key",
            Probe::new(base, "/none/").header("x-canary-version", "canary"),
            "stable",
            "-",
        ),
        (
            "force header where not configured",
            Probe::user(base, "/none/", "u1").header("x-canary-user", "always"),
            "stable",
            "always",
        ),
        (
            "force always",
            Probe::user(base, "/forced-none/", "u1").header("x-canary-user", "always"),
            "canary",
            "-",
        ),
        (
            "force never",
            Probe::user(base, "/forced-all/", "u1").header("x-canary-user", "never"),
            "stable",
            "-",
        ),
        (
            "force with a bad value is ignored",
            Probe::user(base, "/forced-none/", "u1").header("x-canary-user", "yes please"),
            "stable",
            "-",
        ),
        (
            "allow list at 0%",
            Probe::user(base, "/none/", "tester"),
            "canary",
            "-",
        ),
        (
            "deny list at 100%",
            Probe::user(base, "/all/", "vip"),
            "stable",
            "-",
        ),
        (
            "deny list beats force always",
            Probe::user(base, "/forced-none/", "vip").header("x-canary-user", "always"),
            "stable",
            "-",
        ),
        (
            "allow list beats force never",
            Probe::user(base, "/forced-all/", "tester").header("x-canary-user", "never"),
            "canary",
            "-",
        ),
    ];
    let probes: Vec<Probe> = cases.iter().map(|c| c.1.clone()).collect();
    let answers = send_all(&client, &probes, 1).await?;
    for ((what, _, want, force_seen), answer) in cases.iter().zip(&answers) {
        assert_eq!(answer.status, 200, "{what}: {answer:?}");
        assert_eq!(
            answer.served_by.as_deref(),
            Some(*want),
            "{what}: {answer:?}"
        );
        assert_eq!(
            answer.seen_route.as_deref(),
            Some(*want),
            "{what}: the upstream must see only the filter's routing header: {answer:?}"
        );
        assert_eq!(
            answer.seen_force.as_deref(),
            Some(*force_seen),
            "{what}: {answer:?}"
        );
    }
    Ok(())
}

/// Issue test 6: a user without a key gets an id cookie once, and stays on one version.
async fn anonymous_users_get_a_cookie_once_and_stay_put(build: FilterBuild) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let mut rollout = rollout_on_prefix("anon", "/", "anon", 5000);
    rollout.anonymous_cookie.max_age_s = 3600;
    let rig = CanaryRig::start(
        &config(vec![rollout.clone()]),
        RigOptions::with_build(build),
    )
    .await?;
    let client = http_client(8)?;
    let first = send_all(&client, &vec![Probe::new(rig.base(), "/"); 200], 8).await?;
    let mut versions = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for answer in &first {
        assert_eq!(answer.set_cookie.len(), 1, "one Set-Cookie: {answer:?}");
        let cookie = &answer.set_cookie[0];
        let id = cookie
            .strip_prefix("canary_uid=")
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_else(|| panic!("unexpected Set-Cookie {cookie}"));
        for attribute in [
            "Max-Age=3600",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
        ] {
            assert!(
                cookie.split("; ").any(|a| a == attribute),
                "{cookie} lacks {attribute}"
            );
        }
        assert!(ids.insert(id.to_string()), "id {id} handed out twice");
        // The very first response already comes from the version the id hashes to.
        let expected = rollout.version_for_key(id);
        assert_eq!(version_of(answer.served_by.as_deref()), Some(expected));
        versions.insert(expected);
    }
    assert_eq!(
        versions.len(),
        2,
        "200 anonymous users at 50% all got {versions:?}"
    );

    let again: Vec<Probe> = ids
        .iter()
        .flat_map(|id| {
            std::iter::repeat_n(
                Probe::new(rig.base(), "/")
                    .header("cookie", format!("theme=dark; canary_uid={id}")),
                10,
            )
        })
        .collect();
    let answers = send_all(&client, &again, 8).await?;
    for (probe, answer) in again.iter().zip(&answers) {
        let cookie = String::from_utf8_lossy(&probe.headers[0].1).to_string();
        let id = cookie.rsplit('=').next().unwrap_or_default();
        assert!(answer.set_cookie.is_empty(), "cookie set again: {answer:?}");
        assert_eq!(
            version_of(answer.served_by.as_deref()),
            Some(rollout.version_for_key(id)),
            "{cookie}"
        );
    }
    Ok(())
}

/// Header values that are empty, too long, not UTF-8 or full of control characters take the
/// anonymous path; none of them may hurt the VM (a panic would fail every later request).
async fn hostile_keys_fall_back_to_anonymous_and_never_panic(build: FilterBuild) -> Result<()> {
    let _slot = envoy::exclusive().await;
    let rollout = rollout_on_prefix("hostile", "/", "hostile", 5000);
    let rig = CanaryRig::start(
        &config(vec![rollout.clone()]),
        RigOptions::with_build(build),
    )
    .await?;
    let client = http_client(4)?;
    let base = rig.base();
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("not UTF-8", vec![0xff, 0xfe, 0x80, b'a']),
        ("truncated UTF-8", "é".as_bytes()[..1].to_vec()),
        ("257 bytes", vec![b'k'; 257]),
        ("48 KiB", vec![b'k'; 48 * 1024]),
        ("tab inside", b"user\there".to_vec()),
    ];
    for (what, value) in &hostile {
        for _ in 0..3 {
            let answer = canary_e2e::client::send(
                &client,
                &Probe::new(base, "/").header("x-user-id", value.clone()),
            )
            .await?;
            assert_eq!(answer.status, 200, "{what}: {answer:?}");
            assert_eq!(
                answer.set_cookie.len(),
                1,
                "{what}: expected the anonymous path (a new id cookie): {answer:?}"
            );
        }
    }
    // The VM is alive and still routing by the contract.
    let users: Vec<String> = (0..500).map(|i| format!("after-{i}")).collect();
    let probes: Vec<Probe> = users.iter().map(|u| Probe::user(base, "/", u)).collect();
    let answers = send_all(&client, &probes, 4).await?;
    for (user, answer) in users.iter().zip(&answers) {
        assert_eq!(
            version_of(answer.served_by.as_deref()),
            Some(rollout.version_for_key(user)),
            "{user}: {answer:?}"
        );
    }
    let log = rig.envoy().log();
    assert!(!log.contains("panicked"), "the filter panicked:\n{log}");
    Ok(())
}

canary_e2e::for_both_builds!(
    envoy_agrees_with_contract_at_every_weight_and_ramp_is_monotone,
    users_are_sticky_across_envoys_and_workers,
    clients_cannot_pick_a_version_unless_allowed,
    anonymous_users_get_a_cookie_once_and_stay_put,
    hostile_keys_fall_back_to_anonymous_and_never_panic,
);
