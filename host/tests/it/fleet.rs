//! The fleet simulation at CI size (issue 21, point 7): ten real `agentserver run` processes,
//! provisioned headless, against one mock server, 200 tasks, hosts SIGKILLed and restarted at
//! random, tunnels killed by the server, windows of 503s. See
//! `tests/integration/src/fleet.rs`; `agentserver-bench --only fleet` runs the 1000-task size.

use std::path::Path;

use agentserver_integration::fleet::{Sizes, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_hosts_under_kills_and_dropped_connections_run_every_task_once_on_one_host() {
    let sizes = Sizes::CI;
    let f = run(Path::new(env!("CARGO_BIN_EXE_agentserver")), &sizes)
        .await
        .unwrap();
    eprintln!("{}", f.table());
    assert_eq!(f.tasks, sizes.tasks);
    assert_eq!(f.lost, 0, "{:#?}", f.details);
    assert_eq!(f.duplicated, 0, "{:#?}", f.details);
    assert_eq!(f.ran_twice, 0, "{:#?}", f.details);
    assert_eq!(f.wrong_host, 0, "{:#?}", f.details);
    // The run record (the bridge events naming the host process) exists for nearly every task.
    assert!(f.untagged * 10 <= f.tasks, "{f:?}");
    assert_eq!(f.once + f.in_transit, f.tasks, "{:#?}", f.details);
    // The faults happened.
    assert!(f.kills > 0 && f.starts > f.hosts as u32, "{f:?}");
    assert!(f.tunnel_drops > 0, "{f:?}");
    assert!(f.tasks_per_sec > 0.0 && f.poll_to_ack_p99_ms > 0.0, "{f:?}");
}
