//! `projector-backend`: the producer API. Settings come from the environment
//! (see `settings`); it listens on 127.0.0.1:8080 by default.

use projector_backend::{Application, settings::Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = Settings::from_env()?;
    if settings.auth.secret_generated {
        tracing::warn!(
            "no BACKEND_JWT_SECRET or BACKEND_JWT_SECRET_FILE: tokens are signed with a random key and die with this process"
        );
    }
    let app = Application::build(&settings).await?;
    tracing::info!(addr = %app.local_addr(), db = %settings.database, "backend listening");
    app.run(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
