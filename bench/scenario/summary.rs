//! The scenario's summary: medians per subject × matrix cell over the rounds, `report.md` (a
//! side-by-side table with ratios to the first subject) and `latency.svg` (the median run's
//! percentile spectrum per subject × cell). Runs on the scenario's main thread.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

use super::{Cell, Kind, ScenarioError, Spec};
use crate::report::RunJson;

/// One finished run.
pub struct RunRecord {
    pub subject: String,
    pub kind: Kind,
    /// ringlb's worker count, when known.
    pub workers: Option<usize>,
    pub cell: Cell,
    pub json: RunJson,
    pub hist: Histogram<u64>,
}

/// Medians of one subject in one cell.
pub struct Median<'a> {
    pub subject: &'a str,
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub cpu: Option<f64>,
    /// The kernel's part of the CPU per request, the user space's, and the whole, each the
    /// median over the runs that carry the kernel's part (`cpu` is over all runs).
    pub sys: Option<f64>,
    pub user: Option<f64>,
    pub split_cpu: Option<f64>,
    pub errors: u64,
    pub runs: usize,
    /// The run whose rps is the median (its histogram is plotted).
    pub median_run: &'a RunRecord,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Medians per subject (in first-run order) for `cell`.
pub fn medians<'a>(cell: &Cell, runs: &'a [RunRecord]) -> Vec<Median<'a>> {
    let mut subjects: Vec<&str> = Vec::new();
    for r in runs.iter().filter(|r| r.cell == *cell) {
        if !subjects.contains(&r.subject.as_str()) {
            subjects.push(&r.subject);
        }
    }
    let mut out = Vec::new();
    for s in subjects {
        let mine: Vec<&RunRecord> = runs
            .iter()
            .filter(|r| r.cell == *cell && r.subject == s)
            .collect();
        let get = |f: &dyn Fn(&RunJson) -> f64| median(mine.iter().map(|r| f(&r.json)).collect());
        let rps = get(&|j| j.rps);
        let cpus: Vec<f64> = mine
            .iter()
            .filter_map(|r| r.json.subject_cpu_us_per_req.flatten())
            .collect();
        let split: Vec<(f64, f64)> = mine
            .iter()
            .filter_map(|r| {
                let whole = r.json.subject_cpu_us_per_req.flatten()?;
                let sys = r.json.subject_sys_us_per_req.flatten()?;
                Some((whole, sys))
            })
            .collect();
        let of_split = |f: fn(&(f64, f64)) -> f64| {
            (!split.is_empty()).then(|| median(split.iter().map(f).collect()))
        };
        let (split_cpu, user, sys) = (
            of_split(|s| s.0),
            of_split(|s| s.0 - s.1),
            of_split(|s| s.1),
        );
        let mut by_rps = mine.clone();
        by_rps.sort_by(|a, b| a.json.rps.total_cmp(&b.json.rps));
        let Some(&median_run) = by_rps.get(by_rps.len() / 2) else {
            continue;
        };
        out.push(Median {
            subject: s,
            rps,
            p50: get(&|j| j.latency_us.p50 as f64) / 1000.0,
            p99: get(&|j| j.latency_us.p99 as f64) / 1000.0,
            p999: get(&|j| j.latency_us.p999 as f64) / 1000.0,
            cpu: (!cpus.is_empty()).then(|| median(cpus)),
            sys,
            user,
            split_cpu,
            errors: mine.iter().map(|r| r.json.errors).sum(),
            runs: mine.len(),
            median_run,
        });
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// Writes report.md and latency.svg.
pub fn write_report(
    out: &Path,
    spec: &Spec,
    cells: &[Cell],
    runs: &[RunRecord],
    notes: &[String],
) -> Result<(), ScenarioError> {
    let mut md = String::new();
    let _ = writeln!(md, "# Scenario `{}`\n", spec.name);
    let _ = writeln!(
        md,
        "{} round(s) × {} cell(s); {} measured after {} warm-up per run; {} load thread(s).",
        spec.rounds,
        cells.len(),
        spec.duration,
        spec.warmup,
        spec.threads
    );
    let _ = writeln!(
        md,
        "CPUs: subjects `{}`, backends `{}`, load `{}`. Values are medians over the rounds; \
         ratios are to the first subject of each cell.\n",
        spec.cpus.subjects.as_deref().unwrap_or("any"),
        spec.cpus.backends.as_deref().unwrap_or("any"),
        spec.cpus.load.as_deref().unwrap_or("any"),
    );
    md.push_str("| cell | subject | rps | p50 ms | p99 ms | p99.9 ms | CPU µs/req | rps ratio | p99 ratio | errors | runs |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut series = Vec::new();
    let mut notes: Vec<String> = notes.to_vec();
    for cell in cells {
        let meds = medians(cell, runs);
        if let Some(offered) = cell.rate {
            notes.extend(meds.iter().filter_map(|m| {
                let direct = m.median_run.kind == Kind::Direct;
                super::rates::shortfall(m.subject, direct, &cell.label(), offered, m.rps)
            }));
        }
        let Some(first) = meds.first() else { continue };
        let (base_rps, base_p99) = (first.rps, first.p99);
        for m in &meds {
            let cpu = match (m.cpu, m.median_run.kind) {
                (Some(c), _) => format!("{c:.1}"),
                (None, Kind::Direct) => "n/a".into(),
                (None, _) => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.3} | {:.3} | {:.3} | {cpu} | {} | {} | {} | {} |",
                cell.label(),
                m.subject,
                m.rps,
                m.p50,
                m.p99,
                m.p999,
                ratio(m.rps, base_rps),
                ratio(m.p99, base_p99),
                m.errors,
                m.runs
            );
            series.push(crate::svg::Series {
                label: format!("{} {}", m.subject, cell.label()),
                hist: &m.median_run.hist,
            });
        }
    }
    cpu_ratios(&mut md, cells, runs);
    cpu_split(&mut md, cells, runs);
    if !notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        for n in &notes {
            let _ = writeln!(md, "- {}", n.replace('\n', " "));
        }
    }
    per_worker(&mut md, cells, runs);
    md.push_str(
        "\nPer-run results: `*_r<round>.json` (compare them with `ringlb-bench compare`). ",
    );
    md.push_str("Latency spectrum of each median run: `latency.svg`.\n");
    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(|err| ScenarioError::Write {
        path: path.display().to_string(),
        err,
    })?;
    crate::svg::write(
        &out.join("latency.svg"),
        &format!("{}: latency by percentile", spec.name),
        &series,
    )?;
    Ok(())
}

/// Each subject's CPU per request against the first subject's that has CPU figures (a `direct`
/// subject has none), round by round: the median of the per-round ratios and their range. Subjects alternate within a round, so a round's ratio
/// has the host's drift (which moves every subject's figures from one minute to the next)
/// mostly cancelled out; the median of those ratios is steadier than the ratio of the medians.
fn cpu_ratios(md: &mut String, cells: &[Cell], runs: &[RunRecord]) {
    let mut rows = String::new();
    for cell in cells {
        let in_cell: Vec<&RunRecord> = runs.iter().filter(|r| r.cell == *cell).collect();
        let Some(first) = in_cell
            .iter()
            .find(|r| r.json.subject_cpu_us_per_req.flatten().is_some())
            .map(|r| r.subject.as_str())
        else {
            continue;
        };
        let cpu_of = |subject: &str, round: Option<u32>| {
            in_cell
                .iter()
                .find(|r| r.subject == subject && r.json.round == round)
                .and_then(|r| r.json.subject_cpu_us_per_req.flatten())
        };
        let mut subjects: Vec<&str> = Vec::new();
        for r in &in_cell {
            if r.subject != first && !subjects.contains(&r.subject.as_str()) {
                subjects.push(&r.subject);
            }
        }
        for s in subjects {
            let mut ratios: Vec<f64> = in_cell
                .iter()
                .filter(|r| r.subject == s)
                .filter_map(|r| {
                    let mine = r.json.subject_cpu_us_per_req.flatten()?;
                    let base = cpu_of(first, r.json.round).filter(|&b| b > 0.0)?;
                    Some(mine / base)
                })
                .collect();
            if ratios.is_empty() {
                continue;
            }
            ratios.sort_by(f64::total_cmp);
            let _ = writeln!(
                rows,
                "| {} | {s} | {first} | {:.2} | {:.2}–{:.2} | {} |",
                cell.label(),
                median(ratios.clone()),
                ratios[0],
                ratios[ratios.len() - 1],
                ratios.len()
            );
        }
    }
    if rows.is_empty() {
        return;
    }
    md.push_str("\n## CPU per request, round by round\n\n");
    md.push_str("Each subject's CPU µs/req over the first subject's in the same round (subjects alternate within a round, so the host's drift mostly cancels out of each ratio): the median of those ratios and their range.\n\n");
    md.push_str("| cell | subject | against | median ratio | range | rounds |\n");
    md.push_str("|---|---|---|---:|---|---:|\n");
    md.push_str(&rows);
}

/// Each subject's CPU per request split into user space and the kernel (medians over the
/// rounds), and its kernel time alone over the lowest whole CPU per request of the cell's
/// subjects of other kinds (a ringlb build is set against HAProxy and nginx, not against another
/// ringlb build). Where that last figure is at or above a target ratio, no change to the subject's
/// own code reaches the target: only doing less in the kernel (fewer system calls, wake-ups or
/// packets) can.
fn cpu_split(md: &mut String, cells: &[Cell], runs: &[RunRecord]) {
    let mut rows = String::new();
    for cell in cells {
        let meds = medians(cell, runs);
        for m in &meds {
            let (Some(cpu), Some(user), Some(sys)) = (m.split_cpu, m.user, m.sys) else {
                continue;
            };
            let best_other = meds
                .iter()
                .filter(|o| o.median_run.kind != m.median_run.kind)
                .filter_map(|o| o.cpu)
                .fold(f64::INFINITY, f64::min);
            let floor = if best_other.is_finite() {
                ratio(sys, best_other)
            } else {
                "-".into()
            };
            let share = if cpu > 0.0 {
                format!("{:.0}%", 100.0 * sys / cpu)
            } else {
                "-".into()
            };
            let _ = writeln!(
                rows,
                "| {} | {} | {user:.1} | {sys:.1} | {share} | {floor} |",
                cell.label(),
                m.subject
            );
        }
    }
    if rows.is_empty() {
        return;
    }
    md.push_str("\n## User space and kernel\n\n");
    md.push_str("Each subject's CPU µs/req split as /proc accounts it (utime and stime; the kernel's part includes the interrupts and softirqs that ran while the subject was on the CPU), medians over the rounds. The last column is the subject's kernel time alone over the lowest whole CPU µs/req of the subjects of other kinds in the cell (a ringlb build against HAProxy and nginx): where it is at or above a target ratio, no change to that subject's own code reaches the target, only less work in the kernel.\n\n");
    md.push_str("| cell | subject | user µs/req | kernel µs/req | kernel share | kernel alone vs best other kind |\n");
    md.push_str("|---|---|---:|---:|---:|---:|\n");
    md.push_str(&rows);
}

/// When ringlb subjects with different worker counts ran (a scaling scenario): requests/s per
/// worker and its ratio to the first such subject's (1.00 = the added workers scale linearly).
fn per_worker(md: &mut String, cells: &[Cell], runs: &[RunRecord]) {
    let mut counts: Vec<usize> = runs.iter().filter_map(|r| r.workers).collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.len() < 2 {
        return;
    }
    md.push_str("\n## Per worker\n\n");
    md.push_str("Requests/s divided by the subject's workers; efficiency is that figure over the one of the subject with the fewest workers in the cell (named in its row as 1.00). CPU µs/req is the whole process's, per request.\n\n");
    md.push_str("| cell | subject | workers | rps | rps per worker | efficiency | CPU µs/req |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for cell in cells {
        let meds = medians(cell, runs);
        let per = |m: &Median<'_>| {
            let w = m.median_run.workers.filter(|&w| w > 0)?;
            Some((w, m.rps / w as f64))
        };
        // The baseline: the fewest workers that ran (one, unless that subject failed to start).
        let Some((_, base)) = meds.iter().filter_map(per).min_by_key(|&(w, _)| w) else {
            continue;
        };
        for m in &meds {
            let Some((w, each)) = per(m) else {
                continue;
            };
            let cpu = m.cpu.map_or("-".into(), |c| format!("{c:.1}"));
            let _ = writeln!(
                md,
                "| {} | {} | {w} | {:.1} | {each:.1} | {} | {cpu} |",
                cell.label(),
                m.subject,
                m.rps,
                ratio(each, base)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(subject: &str, workers: Option<usize>, rps: f64, cell: Cell) -> RunRecord {
        let json: RunJson = serde_json::from_value(serde_json::json!({
            "url": "http://127.0.0.1:1/", "connections": 512, "duration_s": 5.0,
            "requests": (rps * 5.0) as u64, "errors": 0, "rps": rps, "histogram": "",
            "latency_us": {"p50": 100, "p90": 200, "p99": 300, "p999": 400, "max": 500},
            "subject_cpu_us_per_req": 20.0
        }))
        .expect("json");
        RunRecord {
            subject: subject.into(),
            kind: Kind::Ringlb,
            workers,
            cell,
            json,
            hist: Histogram::new(3).expect("histogram"),
        }
    }

    fn keepalive(conns: usize, rate: Option<u64>) -> Cell {
        Cell {
            conns,
            mode: super::super::Mode::Keepalive,
            proto: super::super::Proto::Http,
            rate,
        }
    }

    #[test]
    fn a_scaling_report_gives_requests_per_worker_and_the_efficiency_against_one_worker() {
        let cell = keepalive(512, None);
        let runs = vec![
            run("ringlb-1w", Some(1), 100_000.0, cell),
            run("ringlb-2w", Some(2), 190_000.0, cell),
            run("ringlb-8w", Some(8), 400_000.0, cell),
        ];
        let mut md = String::new();
        per_worker(&mut md, &[cell], &runs);
        assert!(md.contains("## Per worker"), "{md}");
        assert!(
            md.contains(
                "| http keepalive c512 | ringlb-1w | 1 | 100000.0 | 100000.0 | 1.00 | 20.0 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| ringlb-2w | 2 | 190000.0 | 95000.0 | 0.95 |"),
            "{md}"
        );
        assert!(
            md.contains("| ringlb-8w | 8 | 400000.0 | 50000.0 | 0.50 |"),
            "{md}"
        );
        // Without the one-worker subject (it failed to start), two workers are the baseline.
        let mut md = String::new();
        per_worker(&mut md, &[cell], &runs[1..]);
        assert!(
            md.contains("| ringlb-2w | 2 | 190000.0 | 95000.0 | 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| ringlb-8w | 8 | 400000.0 | 50000.0 | 0.53 |"),
            "{md}"
        );
        // Subjects that all have one worker (peers side by side): no such section.
        let mut md = String::new();
        per_worker(
            &mut md,
            &[cell],
            &[run("a", Some(1), 1.0, cell), run("b", None, 1.0, cell)],
        );
        assert!(md.is_empty(), "{md}");
    }

    fn timed(subject: &str, round: u32, rps: f64, cpu: f64, cell: Cell) -> RunRecord {
        let mut r = run(subject, Some(1), rps, cell);
        r.json.round = Some(round);
        r.json.subject_cpu_us_per_req = Some(Some(cpu));
        r
    }

    #[test]
    fn cpu_ratios_are_taken_round_by_round_against_the_first_subject() {
        let cell = keepalive(64, None);
        // The host slows down in round 2 for both subjects. The ratio of the medians (13 over
        // 14) would say 0.93; two rounds of three say 0.80.
        // In the order a scenario runs them: who goes first rotates each round.
        let runs = vec![
            timed("a", 1, 1.0, 10.0, cell),
            timed("b", 1, 1.0, 8.0, cell),
            timed("b", 2, 1.0, 16.0, cell),
            timed("a", 2, 1.0, 20.0, cell),
            timed("a", 3, 1.0, 14.0, cell),
            timed("b", 3, 1.0, 13.0, cell),
        ];
        let mut md = String::new();
        cpu_ratios(&mut md, &[cell], &runs);
        assert!(
            md.contains("| http keepalive c64 | b | a | 0.80 | 0.80–0.93 | 3 |"),
            "{md}"
        );
        // Round 2 of `a` missing (its run failed): the round is left out, and the others keep
        // their own partners rather than shifting by one.
        let partial: Vec<RunRecord> = runs
            .into_iter()
            .filter(|r| !(r.subject == "a" && r.json.round == Some(2)))
            .collect();
        let mut md = String::new();
        cpu_ratios(&mut md, &[cell], &partial);
        assert!(md.contains("| b | a | 0.86 | 0.80–0.93 | 2 |"), "{md}");
        // A first subject with no CPU figures (`direct`): the next one is the reference.
        let mut d = vec![run("direct", None, 1.0, cell)];
        d[0].json.subject_cpu_us_per_req = Some(None);
        d.extend(partial);
        let mut md = String::new();
        cpu_ratios(&mut md, &[cell], &d);
        assert!(md.contains("| b | a | 0.86 |"), "{md}");
        assert!(!md.contains("| direct |"), "{md}");
    }

    #[test]
    fn the_kernel_part_is_split_out_and_set_against_the_best_other_kinds_whole_cpu() {
        let cell = keepalive(16, None);
        let split = |subject: &str, kind: Kind, round: u32, cpu: f64, sys: f64| {
            let mut r = timed(subject, round, 1.0, cpu, cell);
            r.kind = kind;
            r.json.subject_sys_us_per_req = Some(Some(sys));
            r
        };
        let mut runs = vec![
            split("lean", Kind::Ringlb, 1, 36.0, 31.0),
            split("lean", Kind::Ringlb, 2, 38.0, 32.0),
            split("lean", Kind::Ringlb, 3, 40.0, 34.0),
            // Another ringlb build, cheaper still: not the yardstick for the first.
            split("leaner", Kind::Ringlb, 1, 30.0, 28.0),
            split("peer", Kind::Nginx, 1, 37.0, 31.0),
            split("peer", Kind::Nginx, 2, 38.0, 32.0),
            split("peer", Kind::Nginx, 3, 40.0, 33.0),
        ];
        // A run from a harness that had no kernel figure: counted in the whole CPU only.
        let mut old = timed("old", 1, 1.0, 50.0, cell);
        old.kind = Kind::Haproxy;
        runs.push(old);
        let mut md = String::new();
        cpu_split(&mut md, &[cell], &runs);
        // lean: user 5, 6, 6 -> 6.0; kernel 32.0, 84% of its 38.0; 32 over the best peer's
        // 38.0 (nginx's median; HAProxy's 50; the other ringlb build's 30 does not count).
        assert!(
            md.contains("| http keepalive c16 | lean | 6.0 | 32.0 | 84% | 0.84 |"),
            "{md}"
        );
        assert!(
            md.contains("| http keepalive c16 | leaner | 2.0 | 28.0 | 93% | 0.74 |"),
            "{md}"
        );
        // nginx against the best ringlb build, 30.
        assert!(
            md.contains("| http keepalive c16 | peer | 6.0 | 32.0 | 84% | 1.07 |"),
            "{md}"
        );
        assert!(!md.contains("| old |"), "{md}");
        // Without any kernel figures the section is left out.
        let mut md = String::new();
        cpu_split(&mut md, &[cell], &[timed("old", 1, 1.0, 50.0, cell)]);
        assert!(md.is_empty(), "{md}");
    }

    #[test]
    fn an_open_loop_report_names_the_subject_that_did_not_keep_up() {
        let cell = keepalive(64, Some(50_000));
        let dir = std::env::temp_dir().join(format!("ringlb-bench-rates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let spec: Spec = toml::from_str(
            "name = \"r\"\nconnections = [64]\n[rates]\nkeepalive = [50000]\n\
             [[backend]]\nbind = \"127.0.0.1:1\"\n\
             [[subject]]\nname = \"fast\"\nkind = \"direct\"\n",
        )
        .expect("spec");
        let runs = vec![
            timed("fast", 1, 49_990.0, 10.0, cell),
            timed("slow", 1, 41_000.0, 12.0, cell),
        ];
        write_report(&dir, &spec, &[cell], &runs, &[]).expect("report");
        let md = std::fs::read_to_string(dir.join("report.md")).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            md.contains("| http keepalive c64 50000rps | fast |"),
            "{md}"
        );
        assert!(
            md.contains("slow served 41000 of the 50000 requests/s"),
            "{md}"
        );
        assert!(!md.contains("fast served"), "{md}");
    }

    #[test]
    fn the_worker_count_comes_from_the_config_or_its_cpus() {
        use super::super::ringlb_workers;
        assert_eq!(
            ringlb_workers("[runtime]\nworkers = 4\n", Some("0")),
            Some(4)
        );
        assert_eq!(
            ringlb_workers("[runtime]\nworkers = 0\n", Some("0-7")),
            Some(8)
        );
        assert_eq!(
            ringlb_workers("[[listener]]\nname = \"x\"\n", Some("2,3")),
            Some(2)
        );
        assert_eq!(ringlb_workers("[[listener]]\nname = \"x\"\n", None), None);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
