//! IPVS bulk-programming benchmark (not a test): programs N services x 10 real servers from an
//! empty table with `IpvsHandle::apply`, flushes, then loads the same content with
//! `ipvsadm-restore`, and prints both times and their ratio. Run in the lab guest through
//! `tests/lab/bench-ipvs`, which also gives the namespace an address and routes so the kernel
//! accepts the real servers.
//!
//! Usage: ipvs-bench N [N...]   (default: 1000 10000)

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netlink::ipvs::{Destination, IpvsHandle, Operation, Protocol, Scheduler, Service, ServiceKey};

const REAL_SERVERS: usize = 10;

fn content(n: usize) -> Vec<Operation> {
    let mut ops = Vec::with_capacity(n * (REAL_SERVERS + 1));
    for i in 0..n {
        let key = ServiceKey::Inet {
            protocol: Protocol::Tcp,
            addr: IpAddr::V4(Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)),
            port: 80,
        };
        ops.push(Operation::AddService(Box::new(Service::new(
            key,
            Scheduler::rr(),
        ))));
        for j in 0..REAL_SERVERS {
            let rs = IpAddr::V4(Ipv4Addr::new(10, 255, 0, (j + 2) as u8));
            ops.push(Operation::AddDestination(key, Destination::masq(rs, 8080)));
        }
    }
    ops
}

/// The same content as `ipvsadm-restore` input.
fn restore_text(n: usize) -> String {
    let mut out = String::with_capacity(n * (REAL_SERVERS + 1) * 48);
    for i in 0..n {
        let vip = format!("10.96.{}.{}:80", i / 250, i % 250 + 1);
        let _ = writeln!(out, "-A -t {vip} -s rr");
        for j in 0..REAL_SERVERS {
            let _ = writeln!(out, "-a -t {vip} -r 10.255.0.{}:8080 -m -w 1", j + 2);
        }
    }
    out
}

fn ipvsadm_restore(text: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = Command::new("ipvsadm-restore")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ipvsadm-restore: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("ipvsadm-restore stdin: {e}"))?;
    }
    let status = child.wait().map_err(|e| format!("ipvsadm-restore: {e}"))?;
    let elapsed = start.elapsed();
    if status.success() {
        Ok(elapsed)
    } else {
        Err(format!("ipvsadm-restore failed: {status}"))
    }
}

async fn bench(h: &mut IpvsHandle, n: usize) -> Result<(), String> {
    let ops = content(n);
    h.flush().await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let results = h.apply(&ops).await;
    let batch = start.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        return Err(format!(
            "{failed} batch operations failed, first: {:?}",
            results.iter().find(|r| r.is_err())
        ));
    }
    let table = h.read_table().await.map_err(|e| e.to_string())?;
    if table.services.len() != n || table.destination_count() != n * REAL_SERVERS {
        return Err(format!(
            "batch left {} services / {} real servers",
            table.services.len(),
            table.destination_count()
        ));
    }
    h.flush().await.map_err(|e| e.to_string())?;

    let text = restore_text(n);
    let restore = ipvsadm_restore(&text)?;
    let table = h.read_table().await.map_err(|e| e.to_string())?;
    if table.services.len() != n || table.destination_count() != n * REAL_SERVERS {
        return Err(format!(
            "ipvsadm-restore left {} services / {} real servers",
            table.services.len(),
            table.destination_count()
        ));
    }
    h.flush().await.map_err(|e| e.to_string())?;

    println!(
        "N={n:>6} services x {REAL_SERVERS} real servers = {:>6} operations: batch apply {:>8.3} s, ipvsadm-restore {:>8.3} s, ratio (restore / batch) {:>6.1}x",
        ops.len(),
        batch.as_secs_f64(),
        restore.as_secs_f64(),
        restore.as_secs_f64() / batch.as_secs_f64().max(1e-9),
    );
    Ok(())
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 10_000]
    } else {
        sizes
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ipvs-bench: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        let mut h = match IpvsHandle::connect().await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("ipvs-bench: {e}");
                return 1;
            }
        };
        println!("batch limits: {:?}", h.batch_limits());
        for n in sizes {
            if let Err(e) = bench(&mut h, n).await {
                eprintln!("ipvs-bench: N={n}: {e}");
                return 1;
            }
        }
        0
    });
    std::process::exit(code);
}
