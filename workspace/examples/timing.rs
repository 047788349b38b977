//! Prints how long `prepare` and `finish` take on a small repository (100 files, one commit),
//! sequentially and four at a time. `cargo run -p agentserver-workspace --example timing --release`

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver_workspace::{WorktreeConfig, Worktrees};

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

fn summary(name: &str, mut d: Vec<Duration>) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    println!(
        "{name:<28} n={:<3} median {:>6.1} ms  p90 {:>6.1} ms  max {:>6.1} ms",
        d.len(),
        ms(d[d.len() / 2]),
        ms(d[d.len() * 9 / 10]),
        ms(d[d.len() - 1])
    );
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for i in 0..100 {
        std::fs::write(repo.join(format!("src/f{i}.txt")), "x".repeat(2000)).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    let wt = Arc::new(Worktrees::open(WorktreeConfig::new(&repo, tmp.path().join("wt"))).unwrap());

    let rounds = 20;
    let (mut prep, mut fin_dirty, mut fin_clean) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let t = Instant::now();
        let ws = wt.prepare(&format!("seq-{i}"), None).unwrap();
        prep.push(t.elapsed());
        let dirty = i % 2 == 0;
        if dirty {
            std::fs::write(ws.path().join("src/f1.txt"), "changed").unwrap();
            std::fs::write(ws.path().join("new.txt"), "new").unwrap();
        }
        let t = Instant::now();
        wt.finish(ws).unwrap();
        if dirty {
            &mut fin_dirty
        } else {
            &mut fin_clean
        }
        .push(t.elapsed());
    }
    summary("prepare", prep);
    summary("finish (2 changed files)", fin_dirty);
    summary("finish (clean)", fin_clean);

    let mut prep4 = Vec::new();
    let mut fin4 = Vec::new();
    for r in 0..5 {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let wt = Arc::clone(&wt);
                std::thread::spawn(move || {
                    let t = Instant::now();
                    let ws = wt.prepare(&format!("par-{r}-{i}"), None).unwrap();
                    let p = t.elapsed();
                    std::fs::write(ws.path().join("out.txt"), format!("{i}")).unwrap();
                    let t = Instant::now();
                    wt.finish(ws).unwrap();
                    (p, t.elapsed())
                })
            })
            .collect();
        for h in handles {
            let (p, f) = h.join().unwrap();
            prep4.push(p);
            fin4.push(f);
        }
    }
    summary("prepare, 4 at a time", prep4);
    summary("finish, 4 at a time", fin4);

    let t = Instant::now();
    let r = wt.recover(|_| true).unwrap();
    println!(
        "recover (nothing left)       {:.1} ms, {} bytes under base",
        t.elapsed().as_secs_f64() * 1000.0,
        r.disk_usage_bytes
    );
}
