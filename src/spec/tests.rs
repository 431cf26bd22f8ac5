//! Unit tests of parsing, merging and rendering, over an in-memory tree.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::facts::OsFacts;
use crate::source::MemTree;

fn facts() -> Facts {
    Facts {
        hostname: "web1".into(),
        fqdn: "web1.example.com".into(),
        os: OsFacts {
            id: "debian".into(),
            id_like: vec![],
            version_id: "12".into(),
            name: "Debian".into(),
        },
        arch: "x86_64".into(),
        cpus: 2,
        memory_mb: 1024,
        ipv4: vec!["10.0.0.5".into()],
        ipv6: vec![],
        machine_id: "abc".into(),
        user: "root".into(),
    }
}

fn load_files(files: &[(&str, &str)]) -> Result<DesiredState, SpecErrors> {
    load(&MemTree::new(files), &facts())
}

fn one_error(files: &[(&str, &str)]) -> SpecError {
    let errs = load_files(files).expect_err("expected an error");
    assert_eq!(errs.0.len(), 1, "{errs}");
    errs.0.into_iter().next().unwrap()
}

#[test]
fn full_example_renders() {
    let state = load_files(&[
        (
            "trueup.yaml",
            "include: [roles/base.yaml]\nvars:\n  port: 8080\nfiles:\n  /etc/app.conf:\n    template: templates/app.hbs\n    mode: \"0640\"\n    owner: root\n  /etc/motd:\n    content: \"hello {{facts.hostname}}\\n\"\n  /etc/old:\n    state: absent\ndirectories:\n  /srv/app: { mode: \"0750\" }\nsymlinks:\n  /etc/link: { target: /etc/motd }\n",
        ),
        ("roles/base.yaml", "files:\n  /etc/issue:\n    source: files/issue\n"),
        ("templates/app.hbs", "listen {{vars.port}} on {{facts.fqdn}}\n"),
        ("files/issue", "verbatim {{not rendered}}\n"),
    ])
    .unwrap();
    let f = |p: &str| state.files.get(Path::new(p)).unwrap();
    assert_eq!(
        &f("/etc/app.conf").content.as_ref().unwrap().bytes[..],
        b"listen 8080 on web1.example.com\n"
    );
    assert_eq!(f("/etc/app.conf").mode, Some(0o640));
    assert_eq!(f("/etc/app.conf").owner.as_deref(), Some("root"));
    assert_eq!(
        &f("/etc/motd").content.as_ref().unwrap().bytes[..],
        b"hello web1\n"
    );
    assert_eq!(
        &f("/etc/issue").content.as_ref().unwrap().bytes[..],
        b"verbatim {{not rendered}}\n"
    );
    assert!(f("/etc/old").content.is_none());
    assert_eq!(state.directories[Path::new("/srv/app")].mode, Some(0o750));
    assert_eq!(
        state.symlinks[Path::new("/etc/link")].target.as_deref(),
        Some(Path::new("/etc/motd"))
    );
}

#[test]
fn later_include_and_including_file_win() {
    let state = load_files(&[
        (
            "trueup.yaml",
            "include: [a.yaml, b.yaml]\nvars: { who: main }\nfiles:\n  /x: { content: \"{{vars.who}} {{vars.only_a}}\" }\n",
        ),
        ("a.yaml", "vars: { who: a, only_a: A }\nfiles:\n  /y: { content: a }\n"),
        ("b.yaml", "files:\n  /y: { content: b }\n"),
    ])
    .unwrap();
    assert_eq!(
        &state.files[Path::new("/x")].content.as_ref().unwrap().bytes[..],
        b"main A"
    );
    assert_eq!(
        &state.files[Path::new("/y")].content.as_ref().unwrap().bytes[..],
        b"b"
    );
}

#[test]
fn unknown_key_names_file_line_column() {
    let e = one_error(&[("trueup.yaml", "files:\n  /etc/motd:\n    contnet: hi\n")]);
    assert_eq!((e.file.as_str(), e.line), ("trueup.yaml", 3), "{e}");
    assert!(e.column > 0);
    assert!(e.message.contains("contnet"), "{e}");
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let e = one_error(&[("trueup.yaml", "fiels: {}\n")]);
    assert_eq!(e.line, 1, "{e}");
    assert!(e.message.contains("fiels"), "{e}");
}

#[test]
fn yaml_syntax_error_has_position() {
    let e = one_error(&[("trueup.yaml", "files:\n  /a: { content: x\n  /b: [\n")]);
    assert!(e.line >= 2, "{e}");
}

#[test]
fn wrong_type_is_an_error() {
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /a:\n    content: x\n    secret: maybe\n",
    )]);
    assert_eq!(e.line, 4, "{e}");
}

#[test]
fn duplicate_key_is_an_error() {
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /a: { content: x }\n  /a: { content: y }\n",
    )]);
    assert_eq!(e.line, 3, "{e}");
}

#[test]
fn include_cycle_is_an_error() {
    let e = one_error(&[
        ("trueup.yaml", "include: [a.yaml]\n"),
        ("a.yaml", "include:\n  - b.yaml\n"),
        ("b.yaml", "include: [a.yaml]\n"),
    ]);
    assert_eq!(e.file, "b.yaml");
    assert_eq!(e.line, 1);
    assert!(e.message.contains("cycle"), "{e}");
    assert!(e.message.contains("a.yaml → b.yaml → a.yaml"), "{e}");
}

#[test]
fn missing_include_is_an_error_at_the_include() {
    let e = one_error(&[("trueup.yaml", "vars: {}\ninclude:\n  - roles/nope.yaml\n")]);
    assert_eq!((e.line, e.column), (3, 5), "{e}");
    assert!(e.message.contains("roles/nope.yaml"), "{e}");
}

#[test]
fn include_paths_use_facts_so_one_entry_file_serves_a_fleet() {
    let files = [
        (
            "trueup.yaml",
            "include: [\"hosts/{{facts.hostname}}.yaml\"]\nfiles:\n  /etc/role: { content: base }\n",
        ),
        ("hosts/web1.yaml", "files:\n  /etc/who: { content: web1 }\n"),
        ("hosts/db1.yaml", "files:\n  /etc/who: { content: db1 }\n"),
    ];
    let state = load_files(&files).unwrap();
    let who = state.files.get(Path::new("/etc/who")).unwrap();
    assert_eq!(&who.content.as_ref().unwrap().bytes[..], b"web1");

    // A host without its own file: the rendered path, where it was named.
    let mut other = facts();
    other.hostname = "web2".into();
    let errs = load(&MemTree::new(&files), &other).unwrap_err();
    let e = &errs.0[0];
    assert_eq!(
        (e.file.as_str(), e.line, e.column),
        ("trueup.yaml", 1, 11),
        "{e}"
    );
    assert!(
        e.message.contains("'hosts/web2.yaml' does not exist"),
        "{e}"
    );

    // Only facts: vars come from the very files being included.
    let e = one_error(&[(
        "trueup.yaml",
        "include: [\"{{vars.x}}.yaml\"]\nvars: { x: a }\n",
    )]);
    assert!(e.message.contains("vars.x"), "{e}");
    // A rendered path is checked like a written one.
    let mut odd = facts();
    odd.hostname = "../x".into();
    let errs = load(&MemTree::new(&files), &odd).unwrap_err();
    assert!(errs.0[0].message.contains(".."), "{errs}");
}

#[test]
fn include_escaping_the_tree_is_refused() {
    let e = one_error(&[("trueup.yaml", "include: [../../etc/passwd]\n")]);
    assert!(e.message.contains(".."), "{e}");
    let e = one_error(&[("trueup.yaml", "include: [/etc/passwd]\n")]);
    assert!(e.message.contains("absolute"), "{e}");
}

#[test]
fn missing_template_variable_names_template_and_line() {
    let e = one_error(&[
        ("trueup.yaml", "files:\n  /a: { template: t.hbs }\n"),
        ("t.hbs", "line one\nport {{vars.port}}\n"),
    ]);
    assert_eq!((e.file.as_str(), e.line), ("t.hbs", 2), "{e}");
    assert!(e.message.contains("vars.port"), "{e}");
    assert_eq!(e.resource.as_deref(), Some("file /a"));
}

#[test]
fn missing_variable_in_inline_content() {
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /a:\n    content: \"{{vars.nope}}\"\n",
    )]);
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("vars.nope"), "{e}");
}

#[test]
fn missing_source_file_is_an_error_at_the_source_key() {
    let e = one_error(&[("trueup.yaml", "files:\n  /a:\n    source: files/nope\n")]);
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("files/nope"), "{e}");
}

#[test]
fn source_escaping_the_tree_is_refused() {
    let e = one_error(&[("trueup.yaml", "files:\n  /a:\n    source: ../secret\n")]);
    assert!(e.message.contains(".."), "{e}");
}

#[test]
fn bad_modes_are_refused() {
    for m in ["9999", "644x", "12", "077777", ""] {
        let e = one_error(&[(
            "trueup.yaml",
            &format!("files:\n  /a:\n    content: x\n    mode: \"{m}\"\n"),
        )]);
        assert_eq!(e.line, 4, "{m}: {e}");
    }
    assert_eq!(parse_mode("0644"), Ok(0o644));
    assert_eq!(parse_mode("4755"), Ok(0o4755));
}

#[test]
fn relative_and_dotdot_destinations_are_refused() {
    for p in ["etc/motd", "/etc/../shadow", "/"] {
        let e = one_error(&[(
            "trueup.yaml",
            &format!("files:\n  \"{p}\": {{ content: x }}\n"),
        )]);
        assert!(e.resource.is_some(), "{p}: {e}");
    }
}

#[test]
fn content_and_template_together_are_refused() {
    let e = one_error(&[("trueup.yaml", "files:\n  /a: { content: x, source: y }\n")]);
    assert!(e.message.contains("exactly one"), "{e}");
}

#[test]
fn same_path_as_file_and_directory_is_refused() {
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /a: { content: x }\ndirectories:\n  /a: {}\n",
    )]);
    assert!(e.message.contains("also declared"), "{e}");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let errs = load_files(&[(
        "trueup.yaml",
        "files:\n  /a: { content: \"{{vars.x}}\" }\n  /b: { content: y, mode: \"888\" }\n",
    )])
    .unwrap_err();
    assert_eq!(errs.0.len(), 2, "{errs}");
}

#[test]
fn empty_document_is_empty_state() {
    assert!(
        load_files(&[("trueup.yaml", "# nothing yet\n")])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn non_utf8_and_nul_are_errors() {
    let tree = MemTree(BTreeMap::from([(
        "trueup.yaml".to_string(),
        b"files:\n  /a: \xff\n".to_vec(),
    )]));
    let e = load(&tree, &facts()).unwrap_err();
    assert_eq!(e.0[0].line, 2, "{e}");
    let e = one_error(&[("trueup.yaml", "files:\n  /a: { content: \"a\0b\" }\n")]);
    assert!(e.message.contains("NUL"), "{e}");
}

#[test]
fn owner_may_be_numeric_or_templated() {
    let state = load_files(&[(
        "trueup.yaml",
        "files:\n  /a: { content: x, owner: 0, group: \"{{facts.user}}\" }\n",
    )])
    .unwrap();
    let f = &state.files[Path::new("/a")];
    assert_eq!(
        (f.owner.as_deref(), f.group.as_deref()),
        (Some("0"), Some("root"))
    );
}

#[test]
fn notify_must_name_a_declared_service() {
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /a: { content: x, notify: [nginx.service] }\n",
    )]);
    assert!(e.message.contains("nginx.service"), "{e}");
}

#[test]
fn yaml_messages_speak_to_the_author_not_the_parser_api() {
    // Regression: the parser's hints named its Rust API and budget breaches
    // printed as debug output ("budget breached: Depth { depth: 65 }").
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /a:\n    content: x\n    content: y\n",
    )]);
    assert!(e.message.contains("duplicate"), "{e}");
    assert!(!e.message.contains("Options"), "{e}");
    let e = one_error(&[("trueup.yaml", "files: {}\n---\nfiles: {}\n")]);
    assert!(e.message.contains("more than one YAML document"), "{e}");
    assert!(!e.message.contains("from_str"), "{e}");
    let deep = format!("vars:\n  x: {}1{}\n", "{a: ".repeat(200), "}".repeat(200));
    let e = one_error(&[("trueup.yaml", deep.as_str())]);
    assert!(e.message.contains("too large or too complex"), "{e}");
    assert!(!e.message.contains('{'), "{e}");
    let mut bomb = String::from("vars:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..8 {
        let p = i - 1;
        bomb.push_str(&format!(
            "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let e = one_error(&[("trueup.yaml", bomb.as_str())]);
    assert!(e.message.contains("too many values"), "{e}");
    assert!(e.line > 0, "{e}");
    // Wrong types say what was expected in words, not parser events.
    let e = one_error(&[("trueup.yaml", "files: [/etc/motd]\n")]);
    assert_eq!(
        e.message, "expected a mapping (key: value pairs) here",
        "{e}"
    );
    let e = one_error(&[("trueup.yaml", "include: {a: b}\n")]);
    assert_eq!(e.message, "expected a list here", "{e}");
    let e = one_error(&[("trueup.yaml", "files:\n  /a:\n    content: [x]\n")]);
    assert!(e.message.starts_with("expected a text value"), "{e}");
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /a:\n    content: x\n    owner: 4294967296\n",
    )]);
    assert!(e.message.contains("4294967296 is out of range"), "{e}");
}

#[test]
fn one_big_source_named_many_times_is_bounded() {
    let big = "x".repeat(40 * 1024 * 1024);
    let mut yaml = String::from("files:\n");
    for i in 0..30 {
        yaml.push_str(&format!("  /f{i}: {{ source: big }}\n"));
    }
    let errs = load_files(&[("trueup.yaml", yaml.as_str()), ("big", big.as_str())])
        .expect_err("1.2 GiB of content is refused");
    assert_eq!(errs.0.len(), 1, "reported once: {errs}");
    assert!(errs.0[0].message.contains("MiB of content"), "{errs}");
}

#[test]
fn template_partials_are_a_clean_error_at_the_template_line() {
    let e = one_error(&[
        ("trueup.yaml", "files:\n  /a:\n    template: t.hbs\n"),
        ("t.hbs", "ok\n{{#*inline \"x\"}}{{> x}}{{/inline}}{{> x}}\n"),
    ]);
    assert_eq!((e.file.as_str(), e.line), ("t.hbs", 2), "{e}");
    assert!(e.message.contains("not supported"), "{e}");
}

#[test]
fn service_package_is_named_or_taken_from_the_unit_name() {
    let state = load_files(&[(
        "trueup.yaml",
        "packages:\n  nginx: {}\n  myapp-bin: {}\n  telnet: { state: absent }\nservices:\n  nginx.service: { state: running }\n  app.service: { enabled: true, package: myapp-bin }\n  cron.service: { enabled: true }\n  telnet.socket: { enabled: false }\n",
    )])
    .unwrap();
    let pkg = |u: &str| state.services[u].package.clone();
    assert_eq!(pkg("nginx.service").as_deref(), Some("nginx"));
    assert_eq!(pkg("app.service").as_deref(), Some("myapp-bin"));
    assert_eq!(pkg("cron.service"), None);
    // A package declared absent is not the unit's package.
    assert_eq!(pkg("telnet.socket"), None);
}

#[test]
fn service_package_must_be_declared_and_present() {
    let e = one_error(&[(
        "trueup.yaml",
        "services:\n  app.service:\n    enabled: true\n    package: nosuch\n",
    )]);
    assert!(
        e.message.contains("'nosuch' is not a declared package"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (4, 14), "{e}");
    let e = one_error(&[(
        "trueup.yaml",
        "packages:\n  old: { state: absent }\nservices:\n  app.service: { package: old }\n",
    )]);
    assert!(e.message.contains("declared absent"), "{e}");
}

/// Counts reads, to pin that a shared template is read once.
struct CountingTree {
    inner: MemTree,
    reads: std::sync::Mutex<BTreeMap<String, usize>>,
}

impl Tree for CountingTree {
    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, TreeError> {
        *self
            .reads
            .lock()
            .unwrap()
            .entry(path.as_str().to_string())
            .or_default() += 1;
        self.inner.read(path)
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

#[test]
fn a_template_shared_by_many_files_is_read_once() {
    let mut yaml = String::from("files:\n");
    for i in 0..50 {
        yaml.push_str(&format!("  /etc/f{i}: {{ template: t.hbs }}\n"));
    }
    yaml.push_str("  /etc/bad1: { template: bad.hbs }\n  /etc/bad2: { template: bad.hbs }\n");
    let tree = CountingTree {
        inner: MemTree::new(&[
            ("trueup.yaml", &yaml),
            ("t.hbs", "on {{facts.hostname}}\n"),
            ("bad.hbs", "{{vars.nope}}\n"),
        ]),
        reads: Default::default(),
    };
    let errs = load(&tree, &facts()).expect_err("bad.hbs has a missing variable");
    // Every file using the failing template still reports the failure.
    assert_eq!(errs.0.len(), 2, "{errs}");
    assert!(
        errs.0.iter().all(|e| e.message.contains("vars.nope")),
        "{errs}"
    );
    let reads = tree.reads.lock().unwrap();
    assert_eq!(reads["t.hbs"], 1);
    assert_eq!(reads["bad.hbs"], 1);

    let ok = yaml.replace(
        "  /etc/bad1: { template: bad.hbs }\n  /etc/bad2: { template: bad.hbs }\n",
        "",
    );
    let state = load(
        &MemTree::new(&[("trueup.yaml", &ok), ("t.hbs", "on {{facts.hostname}}\n")]),
        &facts(),
    )
    .unwrap();
    assert_eq!(state.files.len(), 50);
    assert!(
        state
            .files
            .values()
            .all(|f| &f.content.as_ref().unwrap().bytes[..] == b"on web1\n")
    );
}

#[test]
fn service_templates_are_refused_instances_accepted() {
    let e = one_error(&[(
        "trueup.yaml",
        "services:\n  getty@.service: { enabled: true }\n  getty@tty1.service: { enabled: true }\n",
    )]);
    assert!(e.message.contains("is a template"), "{e}");
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn per_file_vars_render_one_template_into_different_files() {
    let state = load_files(&[
        (
            "trueup.yaml",
            "vars:\n  port: 8080\n  name: run\nfiles:\n  /etc/a.conf:\n    template: t.hbs\n    vars: { name: a }\n  /etc/b.conf:\n    template: t.hbs\n    vars: { name: b, port: 9 }\n  /etc/c.conf:\n    template: t.hbs\n  /etc/d.conf:\n    content: \"{{vars.name}} {{facts.hostname}}\"\n    vars: { name: d }\n",
        ),
        ("t.hbs", "{{vars.name}}:{{vars.port}} on {{facts.hostname}}\n"),
    ])
    .unwrap();
    let text = |p: &str| {
        String::from_utf8(
            state.files[Path::new(p)]
                .content
                .as_ref()
                .unwrap()
                .bytes
                .to_vec(),
        )
        .unwrap()
    };
    assert_eq!(text("/etc/a.conf"), "a:8080 on web1\n");
    assert_eq!(text("/etc/b.conf"), "b:9 on web1\n");
    // A file without vars of its own sees the run's, whatever came before.
    assert_eq!(text("/etc/c.conf"), "run:8080 on web1\n");
    assert_eq!(text("/etc/d.conf"), "d web1");
}

#[test]
fn per_file_vars_are_refused_where_nothing_is_rendered() {
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /etc/a:\n    source: f\n    vars: { x: 1 }\n",
    )]);
    assert!(e.message.contains("only a file rendered"), "{e}");
    assert_eq!((e.line, e.column), (4, 11), "{e}");
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /etc/a:\n    template: t.hbs\n    vars: [1, 2]\n",
    )]);
    assert_eq!(e.line, 4, "{e}");
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /etc/a:\n    template: t.hbs\n    vars: { n: 1, n: 2 }\n",
    )]);
    assert!(e.message.contains("duplicate"), "{e}");
    assert_eq!((e.line, e.column), (4, 19), "{e}");
    let e = one_error(&[(
        "trueup.yaml",
        "files:\n  /etc/a:\n    template: t.hbs\n    vars: { x: 1 }\n",
    )]);
    assert!(e.message.contains("does not exist"), "{e}");
    let e = one_error(&[
        (
            "trueup.yaml",
            "files:\n  /etc/a:\n    template: t.hbs\n    vars: { x: 1 }\n",
        ),
        ("t.hbs", "{{vars.y}}"),
    ]);
    assert!(e.message.contains("vars.y"), "{e}");
}

#[test]
fn users_groups_commands_validate_and_the_notify_mapping_render() {
    use crate::desired::NotifyAction;
    use crate::resource::{Kind, ResourceId};
    let yaml = r#"
vars: { user: app }
packages: { sudo: {} }
services: { nginx.service: {} }
groups:
  app: { gid: 990, system: true }
users:
  app:
    uid: 990
    group: app
    groups: [sudo, adm, adm]
    home: /srv/app/
    shell: /usr/sbin/nologin
    authorized_keys: ["ssh-ed25519 AAAA ops@{{facts.hostname}}"]
  old: { state: absent }
files:
  /etc/sudoers.d/app: { content: "x\n", validate: [visudo, -cf, "{path}"] }
  /etc/nginx/nginx.conf: { content: "y\n", notify: { nginx.service: reload } }
commands:
  reload:
    run: [nginx, -s, reload]
    on_change: [/etc/nginx/nginx.conf, "package:sudo", "service:nginx.service", "user:app", "group:app"]
    timeout: 2m
  init:
    run: [/usr/local/bin/init, "{{vars.user}}"]
    creates: /srv/app/.done
    user: app
    env: { HOST: "{{facts.hostname}}" }
"#;
    let d = load_files(&[("trueup.yaml", yaml)]).unwrap();
    assert_eq!(d.groups["app"].gid, Some(990));
    let app = &d.users["app"];
    assert_eq!(
        app.groups.as_deref(),
        Some(&["adm".to_string(), "sudo".into()][..])
    );
    assert_eq!(app.home.as_deref(), Some(Path::new("/srv/app")));
    assert_eq!(
        app.authorized_keys.as_deref(),
        Some(&["ssh-ed25519 AAAA ops@web1".to_string()][..])
    );
    assert!(!d.users["old"].present);
    assert_eq!(
        d.files[Path::new("/etc/sudoers.d/app")].validate,
        ["visudo", "-cf", "{path}"]
    );
    let nginx = &d.files[Path::new("/etc/nginx/nginx.conf")];
    assert_eq!(nginx.notify, ["nginx.service"]);
    assert_eq!(
        nginx.notify_action_for("nginx.service"),
        NotifyAction::Reload
    );
    let reload = &d.commands["reload"];
    assert_eq!(
        reload.on_change,
        [
            ResourceId::new(Kind::File, "/etc/nginx/nginx.conf"),
            ResourceId::new(Kind::Package, "sudo"),
            ResourceId::new(Kind::Service, "nginx.service"),
            ResourceId::new(Kind::User, "app"),
            ResourceId::new(Kind::Group, "app"),
        ]
    );
    assert_eq!(reload.timeout_secs, 120);
    let init = &d.commands["init"];
    assert_eq!(init.run, ["/usr/local/bin/init", "app"]);
    assert_eq!(init.env.get("HOST").map(String::as_str), Some("web1"));
    assert_eq!(
        init.timeout_secs,
        crate::resource::command::DEFAULT_TIMEOUT_SECS
    );
    assert_eq!(init.user.as_deref(), Some("app"));
}

/// `load_only` builds only the files asked for: another entry's value is
/// read past as YAML, unbuilt (here one a full load refuses), and the next
/// load on the thread sees every entry again.
#[test]
fn load_only_builds_only_the_files_asked_for() {
    let files = [(
        "trueup.yaml",
        "files:\n  /etc/a.conf: { content: \"a {{facts.hostname}}\\n\", mode: \"0644\" }\n  /etc/b.conf: { content: b, colour: blue }\n  /etc/c.conf: { content: c }\n",
    )];
    let tree = MemTree::new(&files);
    let none = Secrets::NoIdentity("none".into());
    let only: HashSet<PathBuf> = [PathBuf::from("/etc/a.conf")].into_iter().collect();
    let state = load_only(&tree, &facts(), &none, &only).expect("only a.conf is built");
    assert_eq!(
        state.files.keys().collect::<Vec<_>>(),
        vec![Path::new("/etc/a.conf")]
    );
    let content = state.files[Path::new("/etc/a.conf")].content.as_ref();
    assert_eq!(content.map(|c| &c.bytes[..]), Some(&b"a web1\n"[..]));
    // The unknown key of b.conf is an error again for a full load.
    let errs = load(&tree, &facts()).expect_err("b.conf has an unknown key");
    assert!(errs.to_string().contains("colour"), "{errs}");
    // And a YAML error anywhere is still one for load_only.
    let broken = [(
        "trueup.yaml",
        "files:\n  /etc/a.conf: { content: a }\n  /etc/b.conf: [unclosed\n",
    )];
    assert!(load_only(&MemTree::new(&broken), &facts(), &none, &only).is_err());
}
