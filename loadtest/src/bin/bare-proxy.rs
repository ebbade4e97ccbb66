//! `bare-proxy`: a bare hyper reverse proxy to one upstream, the floor of a proxy built on hyper 1.x
//! and tokio, for `loadtest --compare hyper`. Not a product; see [`loadtest::bare_proxy`].

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use http::uri::Authority;

/// A bare hyper reverse proxy: every request to one upstream, nothing else (loadtest's `hyper` target).
#[derive(Debug, Parser)]
#[command(name = "bare-proxy", disable_version_flag = true)]
struct Args {
    /// Where to listen; port 0 lets the system pick (the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The upstream, `host:port` (plain HTTP).
    #[arg(long, required_unless_present = "version")]
    upstream: Option<Authority>,
    /// Print the version and the hyper stack it is built with.
    #[arg(long, short = 'V')]
    version: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.version {
        println!("{}", loadtest::bare_proxy::version_line());
        return ExitCode::SUCCESS;
    }
    let Some(upstream) = args.upstream else {
        eprintln!("bare-proxy: --upstream is required");
        return ExitCode::FAILURE;
    };
    // One request thread, as switchyard by default.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bare-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match loadtest::bare_proxy::bind(args.listen).await {
            Ok(listener) => {
                loadtest::bare_proxy::serve(listener, upstream).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bare-proxy: cannot listen on {}: {e}", args.listen);
                ExitCode::FAILURE
            }
        }
    })
}
