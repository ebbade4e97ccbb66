//! `loadtest`: runs the scenarios, prints the summary table, writes the report.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use loadtest::Options;

fn main() -> ExitCode {
    let mut opts = Options::parse();
    // Made absolute once: the configs written under it name files (nginx's prefix, the abuse
    // webhook's secret) that each proxy would otherwise read against its own folder, joined twice.
    match std::path::absolute(&opts.out) {
        Ok(out) => opts.out = out,
        Err(e) => {
            eprintln!("loadtest: --out {}: {e}", opts.out.display());
            return ExitCode::FAILURE;
        }
    }
    // One thread by default: the generator shares the machine with what it measures, and a single
    // thread needs no cross-thread wake-ups per request.
    let mut builder = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(opts.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if opts.profile {
        let result = runtime.block_on(loadtest::profile::run(&opts));
        runtime.shutdown_timeout(Duration::from_secs(1));
        return match result {
            Ok(results) => {
                print!("{}", loadtest::profile::table(&results));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadtest: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = runtime.block_on(async {
        tokio::select! {
            r = loadtest::run(&opts) => r,
            _ = tokio::signal::ctrl_c() => Err(loadtest::Error::from("interrupted")),
        }
    });
    // A schedule thread of an interrupted run stops at its next slot; don't wait for stragglers.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(report) => {
            println!("{}", report.table());
            let backends = report.backends_table();
            if !backends.is_empty() {
                println!("{backends}");
                for line in report.over_memory() {
                    println!("{line}");
                }
            }
            for line in report.abuse_lines() {
                println!("{line}");
            }
            for line in report.resolution_lines() {
                println!("{line}");
            }
            for line in report.over_the_stack() {
                println!("{line}");
            }
            for s in &report.skipped {
                println!("skipped: {s}");
            }
            for e in &report.errors {
                println!("error: {e}");
            }
            println!(
                "report: {} and {}",
                opts.out.join("report.md").display(),
                opts.out.join("report.json").display()
            );
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
