//! `realm grammar`: check a GBNF grammar, or turn a JSON schema into the
//! grammar `realm run -j` and `realm serve` constrain generation with, and
//! print it; with `--text`, say whether the grammar allows a text.

use anyhow::{bail, Result};

use crate::run::SamplingArgs;

/// Arguments of `realm grammar`.
#[derive(Debug, clap::Args)]
pub struct GrammarArgs {
    /// The grammar or schema (`--grammar`, `--grammar-file`, `-j`,
    /// `--json-schema-file`); the sampling flags are ignored.
    #[command(flatten)]
    pub source: SamplingArgs,
    /// Instead of printing the grammar, check this text against it: prints
    /// `complete`, `prefix` (it may go on to a sentence) or `rejected`, and
    /// exits 1 when rejected.
    #[arg(long)]
    pub text: Option<String>,
}

pub fn run(args: &GrammarArgs) -> Result<()> {
    let Some(grammar) = args.source.grammar()? else {
        bail!(
            "give a grammar (--grammar, --grammar-file) or a JSON schema (-j, --json-schema-file)"
        );
    };
    let Some(text) = &args.text else {
        print!("{}", grammar.source());
        return Ok(());
    };
    let mut m = realm_models::grammar::Matcher::new(grammar);
    if m.accept(text.as_bytes()).is_err() {
        println!("rejected");
        std::process::exit(1);
    }
    println!(
        "{}",
        if m.is_complete() {
            "complete"
        } else {
            "prefix"
        }
    );
    Ok(())
}
