//! The `tollgate` command: read the config, build the services, run.

use clap::{Parser, Subcommand};
use pingora::services::listening::Service;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tollgate::config::{self, Config};
use tollgate::state::ConfigSource;
use tollgate::{demo, server};

// mimalloc: measured faster than glibc malloc for Pingora's many small,
// short-lived allocations (see docs/book/src/benchmarks-history.md and DESIGN.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tollgate: a reverse proxy for HTTP APIs, built on Pingora.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic as described by a config file.
    ///
    /// Signals: SIGTERM drains and exits (grace period from the config),
    /// SIGINT exits at once, SIGQUIT hands the listening sockets to a new
    /// process started with --upgrade.
    Run {
        /// The YAML config file.
        #[arg(short, long, default_value = "conf/tollgate.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running tollgate (graceful upgrade).
        #[arg(long)]
        upgrade: bool,
        /// Run in the background (writes server.pid_file).
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate a config file and print what it sets up; exits 1 if invalid.
    Check {
        /// The YAML config file.
        config: PathBuf,
    },
    /// Print the configuration's JSON Schema (the copy shipped as
    /// conf/tollgate.schema.json), for editors and CI linters.
    Schema,
    /// Print the `sha256:<hex>` form of an API key for `tenants.*.api_keys`.
    /// Reads the key from standard input when not given (keeps it out of
    /// the shell history).
    HashKey {
        /// The API key.
        key: Option<String>,
    },
    /// Start a built-in sample API on 127.0.0.1:8081 and tollgate in front of
    /// it on 127.0.0.1:8080 (admin on 127.0.0.1:9090), then print curl
    /// commands to try.
    Demo,
}

fn init_logging(config: &Config) {
    let env = env_logger::Env::default().default_filter_or(config.logging.level.as_str());
    let mut builder = env_logger::Builder::from_env(env);
    builder.format_timestamp_millis();
    // Access lines have their own writer (`tollgate::access_log`).
    let _ = builder.try_init();
}

fn serve(config: Config, source: ConfigSource, opts: server::StartOptions) -> ExitCode {
    let origin = matches!(source, ConfigSource::BuiltIn);
    init_logging(&config);
    for w in &config.warnings {
        log::warn!("{}: {w}", config.source);
    }
    if origin {
        if let Err(e) = std::net::TcpListener::bind(demo::ORIGIN_ADDR) {
            eprintln!(
                "error: cannot listen on {} (demo origin): {e}",
                demo::ORIGIN_ADDR
            );
            return ExitCode::FAILURE;
        }
    }
    let mut built = match server::build(config, source, &opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if origin {
        let mut svc = Service::new("demo origin".to_owned(), demo::DemoOrigin::default());
        svc.add_tcp(demo::ORIGIN_ADDR);
        svc.threads = Some(1);
        built.server.add_service(svc);
    }
    built.server.run_forever()
}

/// The summary `tollgate check` prints for a valid config.
fn summary(c: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", c.source);
    for l in &c.listeners {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        let h2c = if l.h2c { " (+ h2c)" } else { "" };
        let _ = writeln!(out, "  listen    {scheme}://{}{h2c}", l.addr);
    }
    let _ = writeln!(out, "  admin     http://{}", c.admin_listen);
    for u in &c.upstreams {
        let backends: Vec<String> = u
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.weight))
            .chain(
                u.names
                    .iter()
                    .map(|n| (format!("{} (dns)", n.query), n.weight)),
            )
            .map(|(b, weight)| match weight {
                1 => b,
                w => format!("{b} (weight {w})"),
            })
            .collect();
        let health = if u.health_check.is_some() {
            ", active health check"
        } else {
            ""
        };
        let protocol = match u.protocol {
            tollgate::config::model::UpstreamProtocol::Http1 => String::new(),
            p => format!(", {}", p.as_str()),
        };
        let _ = writeln!(
            out,
            "  upstream  {}: {}{protocol}{health}",
            u.name,
            backends.join(", ")
        );
    }
    for r in &c.routes {
        let host = match &r.host {
            None => "*".to_owned(),
            Some(pattern) => pattern.to_string(),
        };
        let cache = match &r.cache {
            None => String::new(),
            Some(c) => match c.default_ttl {
                Some(ttl) => format!(", cached (default ttl {ttl:?})"),
                None => ", cached (upstream freshness only)".to_owned(),
            },
        };
        let _ = writeln!(
            out,
            "  route     {}: {host}{} -> {} (total timeout {:?}{cache})",
            r.name,
            r.path_prefix,
            r.destination.describe(&c.upstreams),
            r.timeouts.total
        );
    }
    for w in &c.warnings {
        let _ = writeln!(out, "warning: {}: {w}", c.source);
    }
    out
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(mut c) => {
            // Backend names are asked once, as `run` would at start.
            let memory = tollgate::upstream::UpstreamMemory::default();
            let unresolved = tollgate::upstream::refresh::resolve_first(&c, &memory, None);
            let refused = c.dns.require_at_start && !unresolved.is_empty();
            c.warnings.extend(unresolved);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), summary(&c).as_bytes());
            if refused {
                eprintln!(
                    "{}: dns.require_at_start is set and backend names did not resolve: `run` would refuse to start",
                    c.source
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Pingora binds listeners inside its service threads and, when a bind
/// fails there, panics that thread and keeps the process running without
/// the listener. A proxy that cannot listen must exit, so that panic ends
/// the process (the port check in `server::build` catches the common case
/// before start; this covers losing a race for the port).
fn exit_on_listener_failure() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Failed to build listeners") {
            eprintln!("error: a listener could not be bound; exiting");
            std::process::exit(1);
        }
    }));
}

fn main() -> ExitCode {
    exit_on_listener_failure();
    match Cli::parse().command {
        Command::Run {
            config,
            upgrade,
            daemon,
        } => match config::load(&config) {
            Ok(c) => serve(
                c,
                ConfigSource::File(config),
                server::StartOptions { upgrade, daemon },
            ),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => check(&config),
        Command::Schema => {
            print!("{}", config::schema::json());
            ExitCode::SUCCESS
        }
        Command::HashKey { key } => {
            let key = match key {
                Some(k) => k,
                None => {
                    let mut line = String::new();
                    if let Err(e) = std::io::stdin().read_line(&mut line) {
                        eprintln!("error: reading the key from standard input: {e}");
                        return ExitCode::FAILURE;
                    }
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            if key.is_empty() {
                eprintln!("error: empty key");
                return ExitCode::FAILURE;
            }
            println!("{}", tollgate::ratelimit::identity::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Demo => {
            let c = match config::parse(demo::DEMO_CONFIG, "conf/demo.yaml (built in)") {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            println!(
                "tollgate demo\n\
                 \x20 proxy   http://127.0.0.1:8080   (routes: /reference/, /pricing/, /dashboard/, /slow)\n\
                 \x20 admin   http://127.0.0.1:9090   (status page at /; /metrics, /health, /ready)\n\
                 \x20 origin  http://{}   (built-in sample API)\n\n\
                 Try, in another terminal:\n\
                 \x20 curl -i http://127.0.0.1:8080/reference/countries   # twice: Cache-Status: tollgate; hit\n\
                 \x20 curl -i 'http://127.0.0.1:8080/pricing/quote?sku=pro'\n\
                 \x20 curl -i http://127.0.0.1:8080/slow             # 504 JSON: the route's total timeout is 1s\n\
                 \x20 curl -i http://127.0.0.1:8080/nowhere          # 404 JSON: no route\n\
                 \x20 for i in $(seq 25); do curl -s -o /dev/null -w '%{{http_code}} ' http://127.0.0.1:8080/pricing/quote; done; echo\n\
                 \x20     # anonymous tier: 20 per minute, then 429 (see RateLimit headers with curl -i)\n\
                 \x20 curl -i -H 'Authorization: Bearer demo-key' http://127.0.0.1:8080/pricing/quote   # tenant acme\n\
                 \x20 curl -s http://127.0.0.1:9090/health\n\
                 \x20 curl -s http://127.0.0.1:9090/metrics | grep '^tollgate_'\n\
                 Stop with Ctrl-C.\n",
                demo::ORIGIN_ADDR
            );
            serve(c, ConfigSource::BuiltIn, server::StartOptions::default())
        }
    }
}
