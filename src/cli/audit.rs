//! `chaperone audit verify|export`: check the hash chain; export it for a SIEM.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};

use crate::app::App;
use crate::audit::Verifier;
use crate::store::Store;

const PAGE: i64 = 1000;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain; exits non-zero naming the first broken event.
    Verify,
    /// Export the audit log.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Write to a file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
}

/// Walks the whole chain; returns the number of events or the first break.
pub async fn verify_chain(store: &Store) -> anyhow::Result<i64> {
    let mut verifier = Verifier::default();
    let mut after = 0;
    loop {
        let page = store.audit_page(after, PAGE).await?;
        for row in &page {
            verifier.push(row)?;
        }
        match page.last() {
            Some(last) => after = last.seq,
            None => break,
        }
    }
    let (head_seq, head_hash) = store.audit_head().await?;
    Ok(verifier.finish(head_seq, &head_hash)?)
}

pub async fn run(config: &Path, cmd: AuditCommand) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    match cmd {
        AuditCommand::Verify => {
            let n = verify_chain(&app.store)
                .await
                .context("audit log verification FAILED")?;
            println!("audit log intact: {n} events, chain verified");
        }
        AuditCommand::Export { format, output } => {
            let ExportFormat::Jsonl = format;
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut after = 0;
            loop {
                let page = app.store.audit_page(after, PAGE).await?;
                for row in &page {
                    serde_json::to_writer(&mut out, row)?;
                    out.write_all(b"\n")?;
                }
                match page.last() {
                    Some(last) => after = last.seq,
                    None => break,
                }
            }
            out.flush()?;
        }
    }
    Ok(())
}
