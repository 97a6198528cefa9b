//! Tests of the tune checks against fake /proc and /sys trees (test thread only).

use super::super::host::{parse_cpu_list, write_fake, Limit};
use super::super::{audit, Facts, Plan};
use super::*;

/// A fresh fake tree under the temp dir.
fn tree(name: &str) -> std::path::PathBuf {
    let root = crate::testdir::test_path(&format!("tune-{name}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn facts(kernel: &str, cpus: &[usize]) -> Facts {
    Facts {
        uring: Ok(()),
        kernel: Ok(kernel.to_string()),
        nofile: Ok(Limit {
            soft: Some(1024),
            hard: Some(4096),
        }),
        memlock: Ok(Limit {
            soft: Some(64 * 1024),
            hard: Some(64 * 1024),
        }),
        allowed_cpus: cpus.to_vec(),
        ktls: Ktls::Missing,
    }
}

fn config(backlog: u32, workers: usize) -> crate::config::Config {
    let toml = format!(
        "[runtime]\nworkers = {workers}\n\n[[listener]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\n\
         target_group = \"app\"\nbacklog = {backlog}\n\n[[target_group]]\nname = \"app\"\n\
         targets = [\"127.0.0.1:3000\", \"127.0.0.1:3001\"]\nmax_idle_per_target = 10000\n"
    );
    crate::config::Config::parse(&toml, std::path::Path::new("t.toml")).expect("config")
}

fn by<'a>(fs: &'a [Finding], check: &str) -> &'a Finding {
    fs.iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no {check} finding in {fs:#?}"))
}

#[test]
fn backlog_checks_compare_with_the_configs_largest_backlog() {
    let root = tree("backlog");
    write_fake(&root, "/proc/sys/net/core/somaxconn", "4096\n").unwrap();
    write_fake(&root, "/proc/sys/net/ipv4/tcp_max_syn_backlog", "65535\n").unwrap();
    let host = Host::at(&root);
    let plan = Plan::new(Some(&config(20000, 1)), 2);
    let fs = backlogs(&host, &plan);
    let some = by(&fs, "somaxconn");
    assert_eq!(some.status, Status::Warn);
    assert!(
        some.observed.contains("20000") && some.observed.contains("'edge'"),
        "{some:?}"
    );
    assert!(
        some.fix.contains("sysctl -w net.core.somaxconn=\"65535\""),
        "{}",
        some.fix
    );
    assert_eq!(by(&fs, "tcp_max_syn_backlog").status, Status::Ok);

    let fits = Plan::new(Some(&config(1000, 1)), 2);
    assert_eq!(by(&backlogs(&host, &fits), "somaxconn").status, Status::Ok);
}

#[test]
fn an_empty_tree_gives_every_check_without_panicking() {
    let root = tree("empty");
    let host = Host::at(&root);
    let mut f = facts("garbage", &[]);
    f.nofile = Ok(Limit {
        soft: None,
        hard: None,
    });
    f.memlock = f.nofile.clone();
    let fs = audit(&host, &f, &Plan::new(None, 0));
    for check in [
        "io_uring",
        "kernel",
        "nofile",
        "memlock",
        "somaxconn",
        "tcp_max_syn_backlog",
        "ip_local_port_range",
        "tcp_tw_reuse",
        "netdev_max_backlog",
        "cpus",
        "cpu_governor",
        "nic_irq_affinity",
        "ktls",
        "congestion_control",
    ] {
        let f = by(&fs, check);
        assert_ne!(
            f.status,
            Status::Warn,
            "{f:?}: nothing read, nothing to warn about"
        );
    }
    assert!(by(&fs, "somaxconn")
        .observed
        .contains("cannot read /proc/sys/net/core/somaxconn"));
    assert!(by(&fs, "cpu_governor").observed.contains("no cpufreq"));
    assert!(by(&fs, "nic_irq_affinity").observed.contains("no NIC"));
}

fn fake_nic(root: &std::path::Path, irq_cpus: [&str; 2]) {
    write_fake(
        root,
        "/proc/interrupts",
        "           CPU0       CPU1\n 37:   0   0 PCI-MSIX-0000:00:03.0   0-edge   virtio2-config\n \
         38:  10   0 PCI-MSIX-0000:00:03.0   1-edge   virtio2-input.0\n \
         39:  10   0 PCI-MSIX-0000:00:03.0   2-edge   virtio2-output.0\n \
         41:   5   0 PCI-MSIX-0000:00:04.0   1-edge   virtio3-rx\nNMI: 0 0 Non-maskable interrupts\n",
    )
    .unwrap();
    write_fake(root, "/proc/irq/38/smp_affinity_list", irq_cpus[0]).unwrap();
    write_fake(root, "/proc/irq/39/smp_affinity_list", irq_cpus[1]).unwrap();
    let dev = root.join("sys/devices/pci/virtio2");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(root.join("sys/class/net/eth0")).unwrap();
    let _ = std::os::unix::fs::symlink(&dev, root.join("sys/class/net/eth0/device"));
    // Virtual interfaces have no device: skipped.
    std::fs::create_dir_all(root.join("sys/class/net/lo")).unwrap();
    std::fs::create_dir_all(root.join("sys/class/net/br0")).unwrap();
}

#[test]
fn nic_queues_on_one_cpu_get_spread_over_the_workers() {
    let root = tree("nic-crowded");
    fake_nic(&root, ["0\n", "0\n"]);
    let host = Host::at(&root);
    let plan = Plan::new(Some(&config(100, 2)), 2);
    let fs = nic_irqs(&host, &facts("6.1.0", &[0, 1]), &plan);
    assert_eq!(fs.len(), 1, "only eth0 is a NIC: {fs:#?}");
    let f = &fs[0];
    assert_eq!(f.status, Status::Warn);
    assert!(
        f.observed.contains("38(virtio2-input.0)->0"),
        "{}",
        f.observed
    );
    assert!(
        !f.observed.contains("37"),
        "config vector excluded: {}",
        f.observed
    );
    assert!(
        f.fix.contains("echo 0 > /proc/irq/38/smp_affinity_list"),
        "{}",
        f.fix
    );
    assert!(
        f.fix.contains("echo 1 > /proc/irq/39/smp_affinity_list"),
        "{}",
        f.fix
    );
}

#[test]
fn nic_queues_spread_over_worker_cpus_are_ok() {
    let root = tree("nic-spread");
    fake_nic(&root, ["1\n", "0\n"]);
    let host = Host::at(&root);
    let plan = Plan::new(Some(&config(100, 2)), 2);
    let fs = nic_irqs(&host, &facts("6.1.0", &[0, 1]), &plan);
    assert_eq!(fs[0].status, Status::Ok, "{:?}", fs[0]);
    // With one worker pinned on CPU0, the queue on CPU1 is outside the workers.
    let one = Plan::new(Some(&config(100, 1)), 2);
    let fs = nic_irqs(&host, &facts("6.1.0", &[0, 1]), &one);
    assert_eq!(fs[0].status, Status::Warn, "{:?}", fs[0]);
}

#[test]
fn kernel_versions_and_memlock() {
    let p = Plan::new(None, 4);
    assert_eq!(kernel(&facts("6.1.0-18-amd64", &[0])).status, Status::Ok);
    let old = kernel(&facts("5.15.0-91-generic", &[0]));
    assert_eq!(old.status, Status::Warn);
    assert!(old.recommendation.contains("COOP_TASKRUN"));
    assert_eq!(kernel(&facts("4.19.0", &[0])).status, Status::Warn);
    // 4 workers need 1 MiB of locked memory before 5.12; the fake limit is 64 KiB.
    assert_eq!(memlock(&facts("5.10.0", &[0]), &p).status, Status::Warn);
    assert_eq!(memlock(&facts("6.1.0", &[0]), &p).status, Status::Ok);
}

#[test]
fn nofile_counts_clients_twice_plus_upstream() {
    let plan = Plan::new(Some(&config(4096, 2)), 2);
    assert_eq!(plan.upstream_connections, 2 * 10000 * 2);
    let f = nofile(&facts("6.1.0", &[0, 1]), &plan);
    assert_eq!(f.status, Status::Warn);
    let need = 2 * 4096 + 40000 + NOFILE_SLACK;
    assert!(
        f.observed.contains(&format!("expected {need} fds")),
        "{}",
        f.observed
    );
    assert!(f.fix.contains("LimitNOFILE="), "{}", f.fix);
}

#[test]
fn port_range_against_upstream_connections() {
    let root = tree("ports");
    write_fake(
        &root,
        "/proc/sys/net/ipv4/ip_local_port_range",
        "32768\t60999\n",
    )
    .unwrap();
    let host = Host::at(&root);
    let f = port_range(&host, &Plan::new(Some(&config(100, 2)), 2));
    assert_eq!(
        f.status,
        Status::Warn,
        "40000 connections > 28232/2 ports: {f:?}"
    );
    assert!(f.observed.contains("28232 ports"), "{}", f.observed);
    assert!(f.fix.contains("1024 65535"), "{}", f.fix);
}

#[test]
fn cpu_lists_parse_and_bad_ones_are_errors() {
    assert_eq!(
        parse_cpu_list("0-3,8,10-11\n"),
        Ok(vec![0, 1, 2, 3, 8, 10, 11])
    );
    assert_eq!(parse_cpu_list("1"), Ok(vec![1]));
    assert!(parse_cpu_list("3-1").is_err());
    assert!(parse_cpu_list("0-4294967295").is_err());
    assert!(parse_cpu_list("x").is_err());
}

#[test]
fn bbr_on_the_host_points_at_the_target_groups_that_inherit_it() {
    let root = tree("congestion");
    write_fake(&root, "/proc/sys/net/ipv4/tcp_congestion_control", "bbr\n").unwrap();
    let host = Host::at(&root);
    let inheriting = Plan::new(Some(&config(1000, 1)), 2);
    let f = congestion_control(&host, &inheriting);
    assert_eq!(f.status, Status::Info);
    assert!(f.observed.contains("target group(s) 'app' run it"), "{f:?}");
    assert!(
        f.recommendation.contains("congestion_control = \"cubic\""),
        "{f:?}"
    );

    let mut own = config(1000, 1);
    own.target_groups[0].congestion_control = Some("cubic".into());
    let f = congestion_control(&host, &Plan::new(Some(&own), 2));
    assert_eq!(f.status, Status::Ok, "{f:?}");

    write_fake(
        &root,
        "/proc/sys/net/ipv4/tcp_congestion_control",
        "cubic\n",
    )
    .unwrap();
    let f = congestion_control(&Host::at(&root), &inheriting);
    assert_eq!(f.status, Status::Ok, "{f:?}");
    assert!(f.recommendation.contains("run cubic"), "{f:?}");

    write_fake(&root, "/proc/sys/net/ipv4/tcp_congestion_control", "bbr2\n").unwrap();
    let f = congestion_control(&Host::at(&root), &inheriting);
    assert_eq!(f.status, Status::Info, "bbr2 paces too: {f:?}");
}
