use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use order_engine::cli::{self, Command, Target};
use order_engine::config::Settings;
use order_engine::startup::Application;
use order_engine::telemetry;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An actor-based order engine built on trading units. Without a command it
/// runs the engine; the commands change its routing table through the
/// admin API of a running engine.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Settings file (TOML); `ORDERENGINE__*` environment variables override it.
    #[arg(long, default_value = "config/default.toml", global = true)]
    config: PathBuf,
    /// The admin API to send a command to (default: admin.host and
    /// admin.port of the config); the token comes from
    /// ORDERENGINE__ADMIN__TOKEN or the config's admin.token.
    #[arg(long, global = true)]
    admin_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[actix_web::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Events(cli::Events::Tail {
        from_start,
        file,
        nats_url,
    })) = args.command
    {
        return cli::events::tail(&args.config, from_start, file, nats_url).await;
    }
    if let Some(command) = args.command {
        return match Target::find(&args.config, args.admin_url) {
            Ok(target) => cli::run(target, command).await,
            Err(e) => {
                eprintln!("order-engine: {e}");
                ExitCode::from(2)
            }
        };
    }
    let settings = match Settings::load(&args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("order-engine: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("order-engine: start-up failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order-engine: {e}");
            ExitCode::FAILURE
        }
    }
}
