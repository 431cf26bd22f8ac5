//! The timing and counting helper of `bench/run.sh`, built with plain
//! `rustc` (std only), so the benchmark needs nothing beyond a Rust toolchain.
//!
//! measure time [--runs N] [--warmup N] [--prepare SHELL] [--exit CODE]
//!              [--args-file FILE] -- COMMAND [ARGS...]
//!     Runs COMMAND (no shell) N times after N warm-up runs; before each run
//!     (warm-ups included) runs `sh -c SHELL`. Wall time is taken from just
//!     before the spawn to just after `wait4`, and the peak RSS of each run
//!     from the `rusage` `wait4` returns for that child alone. Every run must
//!     exit with CODE (default 0). FILE adds one argument per line after
//!     ARGS (for argument lists too long for one string, such as 10,000
//!     paths). Prints `min_ms median_ms max_rss_kib`; with `--cpu`, also
//!     the median CPU time (user + system, from the same `rusage`) in ms;
//!     with `--anon`, last, the anonymous RSS in KiB (`RssAnon`) of one
//!     more run (its own prepare first), read from `/proc` when the
//!     process exits (traced with `PTRACE_O_TRACEEXIT`, which stops it
//!     there before its memory goes) and not timed: what of the peak the
//!     process owns (heap, stacks, relocated data) rather than shares
//!     with the page cache (its code, the libraries).
//!
//! measure proxy LISTEN_PORT TARGET_PORT COUNT_FILE
//!     A TCP proxy on 127.0.0.1 that forwards to TARGET_PORT and, after each
//!     connection closes, writes the total bytes it has carried so far in
//!     each direction to COUNT_FILE as `to_server from_server`. Runs until
//!     killed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[repr(C)]
#[derive(Default)]
struct Timeval {
    sec: i64,
    usec: i64,
}

/// `struct rusage` on Linux (x86_64 and aarch64 share this layout).
#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    maxrss: i64,
    rest: [i64; 13],
}

unsafe extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut Rusage) -> i32;
    fn ptrace(request: i32, ...) -> i64;
}

const PTRACE_TRACEME: i32 = 0;
const PTRACE_CONT: i32 = 7;
const PTRACE_SETOPTIONS: i32 = 0x4200;
const PTRACE_O_TRACEEXIT: usize = 0x40;
const PTRACE_EVENT_EXIT: i32 = 6;
const SIGTRAP: i32 = 5;

fn die(msg: &str) -> ! {
    eprintln!("measure: {msg}");
    std::process::exit(1);
}

/// Runs one command; returns (wall seconds, peak RSS in KiB, exit code).
fn run_once(argv: &[String]) -> (f64, i64, i32, f64) {
    let start = Instant::now();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| die(&format!("{}: {e}", argv[0])));
    let pid = child.id() as i32;
    let mut status = 0;
    let mut usage = Rusage::default();
    // SAFETY: plain syscall on our own child, with valid out-pointers; the
    // `Child` handle is never waited on again.
    let r = unsafe { wait4(pid, &mut status, 0, &mut usage) };
    let took = start.elapsed().as_secs_f64();
    std::mem::forget(child);
    if r != pid {
        die("wait4 failed");
    }
    let code = if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        128 + (status & 0x7f)
    };
    let cpu = |t: &Timeval| t.sec as f64 + t.usec as f64 / 1e6;
    (took, usage.maxrss, code, cpu(&usage.utime) + cpu(&usage.stime))
}

/// Runs one command traced, and returns its `RssAnon` (KiB) at exit.
fn anon_at_exit(argv: &[String]) -> i64 {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: between fork and exec the child only makes one syscall.
    unsafe {
        cmd.pre_exec(|| {
            if ptrace(PTRACE_TRACEME, 0usize, 0usize, 0usize) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| die(&format!("{}: {e}", argv[0])));
    let pid = child.id() as i32;
    std::mem::forget(child);
    let mut anon = None;
    let mut traced = false;
    let mut status = 0;
    let mut usage = Rusage::default();
    loop {
        // SAFETY: our own (traced) child, valid out-pointers.
        if unsafe { wait4(pid, &mut status, 0, &mut usage) } != pid {
            die("wait4 failed");
        }
        if status & 0xff != 0x7f {
            break; // exited or killed
        }
        let sig = (status >> 8) & 0xff;
        let event = status >> 16;
        let inject = if sig == SIGTRAP && event == PTRACE_EVENT_EXIT {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            anon = text
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
            0
        } else if !traced && sig == SIGTRAP {
            // The stop after exec: from now on, stop again at exit.
            // SAFETY: plain ptrace requests on our stopped tracee.
            unsafe { ptrace(PTRACE_SETOPTIONS, pid, 0usize, PTRACE_O_TRACEEXIT) };
            traced = true;
            0
        } else {
            sig as usize // a signal for the process: delivered
        };
        // SAFETY: as above.
        unsafe { ptrace(PTRACE_CONT, pid, 0usize, inject) };
    }
    anon.unwrap_or_else(|| die(&format!("{}: no exit stop seen", argv[0])))
}

fn sh(script: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        die(&format!("prepare failed: {script}"));
    }
}

fn time(args: &[String]) {
    let mut runs = 10usize;
    let mut warmup = 1usize;
    let mut prepare: Option<String> = None;
    let mut expect = 0i32;
    let mut argv: Vec<String> = Vec::new();
    let mut args_file: Option<String> = None;
    let mut with_cpu = false;
    let mut with_anon = false;
    let mut i = 0;
    while i < args.len() {
        let next = |i: usize| {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| die("missing value"))
        };
        match args[i].as_str() {
            "--runs" => runs = next(i).parse().unwrap_or_else(|_| die("--runs")),
            "--warmup" => warmup = next(i).parse().unwrap_or_else(|_| die("--warmup")),
            "--prepare" => prepare = Some(next(i)),
            "--exit" => expect = next(i).parse().unwrap_or_else(|_| die("--exit")),
            "--args-file" => args_file = Some(next(i)),
            "--cpu" => {
                with_cpu = true;
                i += 1;
                continue;
            }
            "--anon" => {
                with_anon = true;
                i += 1;
                continue;
            }
            "--" => {
                argv = args[i + 1..].to_vec();
                break;
            }
            other => die(&format!("unknown option {other}")),
        }
        i += 2;
    }
    if argv.is_empty() || runs == 0 {
        die("nothing to run");
    }
    if let Some(f) = args_file {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| die(&format!("{f}: {e}")));
        argv.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    let mut times = Vec::with_capacity(runs);
    let mut cpus = Vec::with_capacity(runs);
    let mut peak = 0;
    for n in 0..warmup + runs {
        if let Some(p) = &prepare {
            sh(p);
        }
        let (took, rss, code, cpu) = run_once(&argv);
        if code != expect {
            die(&format!("{} exited {code}, expected {expect}", argv[0]));
        }
        if n >= warmup {
            times.push(took);
            cpus.push(cpu);
            peak = peak.max(rss);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = if runs % 2 == 1 {
        times[runs / 2]
    } else {
        (times[runs / 2 - 1] + times[runs / 2]) / 2.0
    };
    let mut line = format!("{:.2} {:.2} {}", times[0] * 1e3, median * 1e3, peak);
    if with_cpu {
        cpus.sort_by(f64::total_cmp);
        line += &format!(" {:.2}", cpus[runs / 2] * 1e3);
    }
    if with_anon {
        if let Some(p) = &prepare {
            sh(p);
        }
        line += &format!(" {}", anon_at_exit(&argv));
    }
    println!("{line}");
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: &AtomicU64) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn proxy(args: &[String]) {
    let [listen, target, out] = args else {
        die("usage: measure proxy LISTEN_PORT TARGET_PORT COUNT_FILE")
    };
    let listener = TcpListener::bind(("127.0.0.1", listen.parse::<u16>().unwrap_or(0)))
        .unwrap_or_else(|e| die(&format!("listen: {e}")));
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let target = target.clone();
    let out = Arc::new(out.clone());
    std::fs::write(out.as_str(), "0 0\n").unwrap_or_else(|e| die(&format!("{out}: {e}")));
    for client in listener.incoming().flatten() {
        let Ok(server) = TcpStream::connect(("127.0.0.1", target.parse::<u16>().unwrap_or(0)))
        else {
            continue;
        };
        let (up, down, out) = (up.clone(), down.clone(), out.clone());
        std::thread::spawn(move || {
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => return,
            };
            let up2 = up.clone();
            let t = std::thread::spawn(move || pump(c2, s2, &up2));
            pump(server, client, &down);
            let _ = t.join();
            let text = format!(
                "{} {}\n",
                up.load(Ordering::SeqCst),
                down.load(Ordering::SeqCst)
            );
            let _ = std::fs::write(out.as_str(), text);
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("time") => time(&args[1..]),
        Some("proxy") => proxy(&args[1..]),
        _ => die("usage: measure time ... | measure proxy ..."),
    }
}
