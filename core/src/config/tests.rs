//! The validator as a whole: one text in, a config or its list of issues out.

use super::*;
use orchestrator_proto::task::TaskKind;

/// The issues a text produces; empty when it validates.
fn errors(text: &str) -> Vec<ConfigIssue> {
    match Config::from_toml(text, None) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors,
    }
}

#[test]
fn builtin_defaults_validate() {
    let cfg = Config::builtin();
    assert_eq!(cfg.mode, Mode::Synthetic);
    assert_eq!(cfg.routing.rules.len(), 8);
    assert_eq!(cfg.gate.fixtures.fixtures.len(), 5);
    assert_eq!(
        cfg.sweeper.retention.synthetic,
        Some(Duration::from_secs(86400))
    );
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let e = errors("mode = \"synthetic\"\n\n[sweeper]\nintervall = \"1m\"\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key, "intervall");
    assert_eq!(e[0].line, Some(4));
}

#[test]
fn bad_mode_is_an_error() {
    let e = errors("mode = \"prod\"\n");
    assert_eq!(e[0].key, "mode");
}

#[test]
fn fingerprint_changes_with_rules_only() {
    let a = Config::builtin();
    let b = Config::from_toml("[sweeper]\ninterval = \"5m\"\n", None).unwrap();
    assert_eq!(a.routing_fingerprint(), b.routing_fingerprint());
    let c = Config::from_toml(
        "[[routing.rules]]\nid = \"r\"\npattern = \"x\"\nagent = \"main\"\n",
        None,
    )
    .unwrap();
    assert_ne!(a.routing_fingerprint(), c.routing_fingerprint());
}

#[test]
fn undeclared_agent_is_a_warning_in_synthetic_mode() {
    let text = "[[routing.rules]]\nid = \"r\"\npattern = \"x\"\nagent = \"ghost\"\n";
    let cfg = Config::from_toml(text, None).unwrap();
    assert!(
        cfg.warnings.iter().any(|w| w.contains("ghost")),
        "{:?}",
        cfg.warnings
    );
    // One line for all of them in synthetic mode, where nothing runs; one per agent where they
    // would fail.
    let undeclared: Vec<&String> = cfg
        .warnings
        .iter()
        .filter(|w| w.contains("without an [agents.<id>] entry"))
        .collect();
    assert_eq!(undeclared.len(), 1, "{:?}", cfg.warnings);
    assert!(undeclared[0].contains("\"ghost\""), "{}", undeclared[0]);
    assert!(
        undeclared[0].contains("fine in synthetic mode"),
        "{}",
        undeclared[0]
    );
    let shadow = Config::from_toml(&format!("mode = \"shadow\"\n{text}"), None).unwrap();
    let each: Vec<&String> = shadow
        .warnings
        .iter()
        .filter(|w| w.contains("rule_loaded_no_agent"))
        .collect();
    assert!(each.len() > 1, "{:?}", shadow.warnings);
    assert!(
        each.iter().any(|w| w.starts_with("agent \"ghost\"")),
        "{each:?}"
    );
}

#[test]
fn invalid_regex_names_the_rule_and_line() {
    let text = "[[routing.rules]]\nid = \"broken\"\npattern = \"(unclosed\"\nagent = \"main\"\n";
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].key.contains("broken"), "{:?}", e[0]);
    assert_eq!(e[0].line, Some(3));
}

#[test]
fn duplicate_rule_ids_are_an_error() {
    let text = "[[routing.rules]]\nid = \"a\"\npattern = \"x\"\nagent = \"main\"\n\n[[routing.rules]]\nid = \"a\"\npattern = \"y\"\nagent = \"main\"\n";
    let e = errors(text);
    assert_eq!(e.len(), 1);
    assert!(e[0].message.contains("duplicate"), "{:?}", e[0]);
    assert_eq!(e[0].line, Some(7));
}

#[test]
fn empty_rule_set_is_an_error() {
    let e = errors("[routing]\nrules = []\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key, "routing.rules");
}

#[test]
fn bad_duration_is_an_error_with_its_line() {
    let e = errors("[sweeper]\ninterval = \"soon\"\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key, "sweeper.interval");
    assert_eq!(e[0].line, Some(2));
}

#[test]
fn retention_zero_keeps_forever() {
    let cfg = Config::from_toml("[sweeper.retention]\nlive = \"0\"\n", None).unwrap();
    assert_eq!(cfg.sweeper.retention.live, None);
    assert_eq!(
        cfg.sweeper.retention.shadow,
        Some(Duration::from_secs(7 * 86400))
    );
}

#[test]
fn notify_sinks_validate_with_defaults() {
    let cfg = Config::from_toml(
        "[[notify]]\nname = \"phone\"\nevents = [\"*\"]\nwebhook = \"https://ntfy.sh/x\"\n\n\
         [[notify]]\nname = \"mail\"\nevents = [\"task.done\"]\nkinds = [\"synthetic\"]\n\
         command = [\"/bin/true\"]\ntimeout = \"5s\"\n",
        None,
    )
    .unwrap();
    assert_eq!(cfg.notify.len(), 2);
    let phone = &cfg.notify[0];
    assert_eq!(phone.give_up_after, Duration::from_secs(86400));
    assert!(phone.wants("approval.requested", Some((TaskKind::Live, Some("coder")))));
    assert!(!phone.wants("task.done", Some((TaskKind::Live, None))));
    assert!(!phone.wants("task.failed", Some((TaskKind::Synthetic, None))));
    assert!(phone.wants("daemon.alarm", None));
    let mail = &cfg.notify[1];
    assert!(mail.wants("task.done", Some((TaskKind::Synthetic, None))));
    assert_eq!(mail.timeout, Duration::from_secs(5));
}

#[test]
fn notify_sink_errors_name_their_lines() {
    let e = errors(
        "[[notify]]\nname = \"a\"\nevents = [\"task.exploded\"]\nwebhook = \"ftp://x\"\n\n\
         [[notify]]\nname = \"a\"\nevents = [\"*\"]\ncommand = [\"/bin/true\"]\n\n\
         [[notify]]\nname = \"b\"\nevents = [\"*\"]\n",
    );
    let keys: Vec<(&str, Option<usize>)> = e.iter().map(|i| (i.key.as_str(), i.line)).collect();
    assert!(keys.contains(&("notify[a].events", Some(3))), "{keys:?}");
    assert!(keys.contains(&("notify[a].webhook", Some(4))), "{keys:?}");
    assert!(keys.contains(&("notify[a]", Some(7))), "{keys:?}");
    assert!(keys.contains(&("notify[b]", Some(12))), "{keys:?}");
}

#[test]
fn approval_timeout_default_and_per_agent() {
    let cfg = Config::from_toml(
        "[routing]\napproval_timeout = \"4h\"\non_approval_timeout = \"reject\"\n\
         approval_warning = \"30m\"\n\n[agents.coder]\ncommand = [\"/bin/true\"]\n\
         approval_timeout = \"1h\"\non_approval_timeout = \"expire\"\n\n\
         [agents.writer]\ncommand = [\"/bin/true\"]\napproval_timeout = \"2h\"\n",
        None,
    )
    .unwrap();
    let p = &cfg.approval;
    assert_eq!(p.warning, Duration::from_secs(1800));
    let d = p.for_agent(Some("other")).unwrap();
    assert_eq!(
        (d.after, d.then),
        (Duration::from_secs(4 * 3600), OnApprovalTimeout::Reject)
    );
    let c = p.for_agent(Some("coder")).unwrap();
    assert_eq!(
        (c.after, c.then),
        (Duration::from_secs(3600), OnApprovalTimeout::Expire)
    );
    // `writer` takes the action from [routing].
    let w = p.for_agent(Some("writer")).unwrap();
    assert_eq!(
        (w.after, w.then),
        (Duration::from_secs(7200), OnApprovalTimeout::Reject)
    );
    assert_eq!(Config::builtin().approval.for_agent(Some("coder")), None);
}

#[test]
fn approval_timeout_needs_an_action() {
    let e = errors("[routing]\napproval_timeout = \"4h\"\n");
    assert_eq!(e[0].key, "routing.approval_timeout");
    assert_eq!(e[0].line, Some(2));
    let e = errors("[routing]\napproval_timeout = \"4h\"\non_approval_timeout = \"maybe\"\n");
    assert_eq!(e[0].key, "routing.on_approval_timeout");
}

#[test]
fn integrity_check_interval_defaults_to_a_day_and_may_be_off() {
    let day = Some(Duration::from_secs(86400));
    assert_eq!(Config::builtin().store.integrity_check_interval, day);
    let off = Config::from_toml("[store]\nintegrity_check_interval = \"off\"\n", None).unwrap();
    assert_eq!(off.store.integrity_check_interval, None);
    let hourly = Config::from_toml("[store]\nintegrity_check_interval = \"1h\"\n", None).unwrap();
    assert_eq!(
        hourly.store.integrity_check_interval,
        Some(Duration::from_secs(3600))
    );
}

#[test]
fn bad_integrity_check_interval_is_an_error_with_its_line() {
    for bad in ["\"soon\"", "\"5s\"", "\"0\""] {
        let e = errors(&format!("[store]\nintegrity_check_interval = {bad}\n"));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert_eq!(e[0].key, "store.integrity_check_interval");
        assert_eq!(e[0].line, Some(2), "{bad}");
    }
}

#[test]
fn metrics_need_the_token_off_loopback_unless_said_otherwise() {
    let http = |text: &str| Config::from_toml(text, None).unwrap().http.unwrap();
    assert!(!http("[http]\nlisten = \"127.0.0.1:7419\"\n").metrics_token);
    assert!(http("[http]\nlisten = \"0.0.0.0:7419\"\n").metrics_token);
    let on = "[http]\nlisten = \"127.0.0.1:7419\"\nmetrics_token = true\n";
    assert!(http(on).metrics_token);
    let off = "[http]\nlisten = \"0.0.0.0:7419\"\nmetrics_token = false\n";
    assert!(!http(off).metrics_token);
    let e = errors("[http]\nlisten = \"127.0.0.1:7419\"\nmetrics_token = \"yes\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].line, Some(3));
}

#[test]
fn retries_and_shared_limits_validate_with_their_lines() {
    let cfg = Config::from_toml(
        "[limits.acme]\nmax_concurrent = 2\n\n[agents.coder]\ncommand = [\"c\"]\nlimits = [\"acme\"]\n\
         retry_on = [\"specialist_timeout\"]\nretry_backoff = \"1m\"\nmax_attempts = 3\n",
        None,
    )
    .unwrap();
    assert_eq!(cfg.limits["acme"].max_concurrent, 2);
    let coder = cfg.agent("coder").unwrap();
    assert_eq!(coder.limits, vec!["acme".to_string()]);
    assert_eq!(coder.retry_on, vec!["specialist_timeout".to_string()]);
    assert_eq!(coder.retry_backoff, Duration::from_secs(60));

    let e = errors(
        "[limits.acme]\nmax_concurrent = 0\n\n[agents.coder]\ncommand = [\"c\"]\n\
         limits = [\"acme\", \"other\"]\nretry_on = [\"rejected\"]\nretry_backoff = \"0\"\n",
    );
    let keys: Vec<(&str, Option<usize>)> = e.iter().map(|i| (i.key.as_str(), i.line)).collect();
    assert!(
        keys.contains(&("limits.acme.max_concurrent", Some(2))),
        "{keys:?}"
    );
    assert!(keys.contains(&("agents.coder.limits", Some(6))), "{keys:?}");
    assert!(
        keys.contains(&("agents.coder.retry_on", Some(7))),
        "{keys:?}"
    );
    assert!(
        keys.contains(&("agents.coder.retry_backoff", Some(8))),
        "{keys:?}"
    );
    assert!(e.iter().any(|i| i.message.contains("no [limits.other]")));
}

/// A declared agent whose program or working directory is missing is a warning: its tasks would
/// fail with spawn_failed. A program found on the agent's PATH, or a path relative to its working
/// directory, is not.
#[test]
fn an_agent_whose_program_cannot_start_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let missing = |toml: &str| -> Vec<String> {
        let cfg = Config::from_toml(toml, None).unwrap();
        cfg.warnings
            .into_iter()
            .filter(|w| w.contains("spawn_failed") && w.starts_with("agent \"coder\":"))
            .collect()
    };
    let bare = missing("[agents.coder]\ncommand = [\"no-such-program-here\"]\n");
    assert_eq!(bare.len(), 1, "{bare:?}");
    assert!(bare[0].contains("not found on PATH"), "{bare:?}");
    let absolute = missing("[agents.coder]\ncommand = [\"/nonexistent/agent\"]\n");
    assert!(
        absolute[0].contains("is not an executable file"),
        "{absolute:?}"
    );
    let not_a_dir = missing(&format!(
        "[agents.coder]\ncommand = [\"sh\"]\nworking_dir = \"{}/gone\"\n",
        dir.path().display()
    ));
    assert!(not_a_dir[0].contains("working_dir"), "{not_a_dir:?}");
    // Found on the agent's own PATH; relative to its working directory; a real absolute path.
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    let tool = dir.path().join("bin/my-agent");
    std::fs::write(&tool, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for ok in [
        format!(
            "[agents.coder]\ncommand = [\"my-agent\"]\nenv = {{ PATH = \"{}/bin\" }}\n",
            dir.path().display()
        ),
        "[agents.coder]\ncommand = [\"./run.sh\"]\n".to_string(),
        "[agents.coder]\ncommand = [\"/bin/sh\"]\n".to_string(),
    ] {
        assert_eq!(missing(&ok), Vec::<String>::new(), "{ok}");
    }
}
