//! Micro-benchmarks of the pure core on generated inputs: parsing a state
//! file, rendering a branch, diffing a file, and planning. The whole-process
//! numbers are `bench/run.sh`'s; these tell which part of a run moved.
//!
//! `cargo bench --bench engine` (add `-- parse` to run one group).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use trueup::desired::DesiredState;
use trueup::facts::{Facts, OsFacts};
use trueup::plan::{Observations, plan};
use trueup::resource::accounts::{Accounts, WantedMeta};
use trueup::resource::file;
use trueup::resource::node::{Meta, NodeObservation};
use trueup::source::MemTree;
use trueup::spec;

const SIZES: [usize; 3] = [100, 1_000, 10_000];

/// The template bench/gen.sh writes: facts, vars, a loop and a condition.
fn template(i: usize) -> String {
    let mut t = format!(
        "# {i:05}: managed by trueup on {{{{facts.hostname}}}} ({{{{facts.os.id}}}} {{{{facts.os.version_id}}}}, {{{{facts.arch}}}})\n\
         [service]\nname = {{{{vars.app}}}}-{i:05}\nlisten = 0.0.0.0:{{{{vars.port}}}}\n\
         workers = {{{{vars.workers}}}}\ncpus = {{{{facts.cpus}}}}\nmachine = {{{{facts.machine_id}}}}\n\
         {{{{#each vars.upstreams}}}}\nupstream = {{{{this}}}}:{{{{../vars.port}}}}\n{{{{/each}}}}\n\
         {{{{#if vars.workers}}}}\nthreads = {{{{vars.workers}}}}\n{{{{/if}}}}\n"
    );
    for j in 0..16 {
        t.push_str(&format!(
            "option_{j:02} = value-{i:05}-{j:02} lorem ipsum dolor sit amet\n"
        ));
    }
    t
}

/// `trueup.yaml` declaring `n` files from `templates` templates.
fn state_yaml(n: usize, templates: usize) -> String {
    let mut y = String::from(
        "vars:\n  app: bench\n  port: 8080\n  workers: 4\n  upstreams: [10.0.0.1, 10.0.0.2, 10.0.0.3]\nfiles:\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "  /srv/bench/d{:03}/f{i:05}.conf:\n    template: templates/t{:05}.conf.hbs\n    mode: \"0644\"\n",
            i / 100,
            i % templates
        ));
    }
    y
}

/// A generated branch held in memory.
fn branch(n: usize, templates: usize) -> MemTree {
    let mut files = BTreeMap::new();
    files.insert(
        spec::ENTRY_FILE.to_string(),
        state_yaml(n, templates).into_bytes(),
    );
    for i in 0..templates {
        files.insert(
            format!("templates/t{i:05}.conf.hbs"),
            template(i).into_bytes(),
        );
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
            name: "Debian GNU/Linux 12 (bookworm)".into(),
        },
        arch: "x86_64".into(),
        cpus: 2,
        memory_mb: 2048,
        ipv4: vec!["192.0.2.10".into()],
        ipv6: vec![],
        machine_id: "3d1219c7c4c5404aaa1f6d2a48adfda4".into(),
        user: "root".into(),
    }
}

/// root and nothing else, without NSS.
struct RootOnly;

impl Accounts for RootOnly {
    fn uid(&self, name: &str) -> Option<u32> {
        (name == "root").then_some(0)
    }
    fn gid(&self, name: &str) -> Option<u32> {
        self.uid(name)
    }
    fn user_name(&self, uid: u32) -> String {
        if uid == 0 {
            "root".into()
        } else {
            uid.to_string()
        }
    }
    fn group_name(&self, gid: u32) -> String {
        self.user_name(gid)
    }
}

fn render(n: usize, templates: usize) -> DesiredState {
    spec::load(&branch(n, templates), &facts()).expect("the generated branch renders")
}

/// What observing a machine where every file is in sync, or every
/// hundredth file was edited, would give.
fn observations(desired: &DesiredState, drifted: bool) -> Observations {
    let meta = Meta {
        uid: 0,
        gid: 0,
        mode: 0o644,
    };
    let nodes = desired
        .files
        .iter()
        .enumerate()
        .map(|(i, (path, f))| {
            let want = &f.content.as_ref().expect("content").bytes;
            let content: Arc<[u8]> = if drifted && i % 100 == 0 {
                let mut c = want.to_vec();
                c.extend_from_slice(b"edited by hand\n");
                c.into()
            } else {
                want.clone()
            };
            let obs = NodeObservation::File {
                meta,
                content: Some(content),
            };
            (path.clone(), Ok(obs))
        })
        .collect();
    Observations {
        nodes,
        ..Observations::default()
    }
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for n in SIZES {
        let yaml = state_yaml(n, 1);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &yaml, |b, yaml| {
            b.iter(|| spec::parse_document("trueup.yaml", black_box(yaml.as_bytes())).unwrap())
        });
    }
    g.finish();
}

fn render_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    g.sample_size(20);
    for n in SIZES {
        g.throughput(Throughput::Elements(n as u64));
        let shared = branch(n, 1);
        g.bench_with_input(BenchmarkId::new("shared-template", n), &shared, |b, t| {
            b.iter(|| spec::load(black_box(t), &facts()).unwrap())
        });
        if n <= 1_000 {
            let distinct = branch(n, n);
            g.bench_with_input(
                BenchmarkId::new("distinct-templates", n),
                &distinct,
                |b, t| b.iter(|| spec::load(black_box(t), &facts()).unwrap()),
            );
        }
    }
    g.finish();
}

fn diff(c: &mut Criterion) {
    let mut g = c.benchmark_group("diff");
    let desired = render(1, 1);
    let (path, spec) = desired.files.iter().next().expect("one file");
    let want = WantedMeta::resolve(None, None, Some(0o644), &RootOnly).unwrap();
    let same = observations(&desired, false);
    let edited = observations(&desired, true);
    let take = |o: &Observations| o.nodes.values().next().unwrap().clone().unwrap();
    g.bench_function("in-sync", |b| {
        b.iter(|| file::diff(path, spec, &want, black_box(take(&same)), &RootOnly))
    });
    g.bench_function("edited", |b| {
        b.iter(|| file::diff(path, spec, &want, black_box(take(&edited)), &RootOnly))
    });
    g.finish();
}

fn plan_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    for n in SIZES {
        let desired = render(n, 1);
        g.throughput(Throughput::Elements(n as u64));
        for (name, drifted) in [("in-sync", false), ("1%-drift", true)] {
            g.bench_with_input(BenchmarkId::new(name, n), &desired, |b, d| {
                b.iter_batched(
                    || observations(d, drifted),
                    |obs| plan(d, obs, &RootOnly).unwrap(),
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, parse, render_group, diff, plan_group);
criterion_main!(benches);
