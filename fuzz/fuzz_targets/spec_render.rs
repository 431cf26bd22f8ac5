//! The state parser and renderer on arbitrary branches: `spec::load` over an
//! in-memory tree must return a state or errors, never panic, hang or
//! exhaust memory.
//!
//! Input format (so seeds stay readable): the bytes up to the first line
//! starting with `#@ ` are `trueup.yaml`; each `#@ PATH` line starts another
//! file of the tree, named PATH.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use trueup::facts::{Facts, OsFacts};
use trueup::source::MemTree;

fn split(data: &[u8]) -> MemTree {
    let mut files = BTreeMap::new();
    let mut name = "trueup.yaml".to_string();
    let mut start = 0;
    let mut i = 0;
    while i <= data.len() {
        let at_line_start = i == 0 || data[i - 1] == b'\n';
        if i == data.len() || (at_line_start && data[i..].starts_with(b"#@ ")) {
            if i > start || i == data.len() {
                files.insert(name.clone(), data[start..i].to_vec());
            }
            if i == data.len() {
                break;
            }
            let end = data[i..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(data.len(), |p| i + p);
            name = String::from_utf8_lossy(&data[i + 3..end])
                .trim()
                .to_string();
            start = (end + 1).min(data.len());
            i = start;
            continue;
        }
        i += 1;
    }
    MemTree(files)
}

fn facts() -> Facts {
    Facts {
        hostname: "web1".into(),
        fqdn: "web1.example.com".into(),
        os: OsFacts {
            id: "debian".into(),
            id_like: vec![],
            version_id: "12".into(),
            name: "Debian GNU/Linux".into(),
        },
        arch: "x86_64".into(),
        cpus: 2,
        memory_mb: 2048,
        ipv4: vec!["10.0.0.5".into()],
        ipv6: vec!["fe80::1".into()],
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        user: "root".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let tree = split(data);
    match trueup::spec::load(&tree, &facts()) {
        Ok(state) => {
            // What `trueup render` prints must serialize too.
            let _ = serde_json::to_string(&state).expect("a desired state serializes");
            for path in state.files.keys().chain(state.directories.keys()) {
                assert!(path.is_absolute(), "{}", path.display());
                assert!(
                    !path
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir)),
                    "{}",
                    path.display()
                );
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            let _ = errors.to_string();
        }
    }
});
