//! weir-agent: parse flags, build, run. Everything else lives in the library.
use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    weir_operator_agent::tune_allocator();
    let config = weir_operator_agent::config::Config::parse();
    weir_operator_agent::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let agent = weir_operator_agent::Agent::build(config).await?;
        agent.run().await
    })
}
