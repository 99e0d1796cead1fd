//! `realm grammar`: check a GBNF grammar, or turn a JSON schema into the
//! grammar `realm run -j` and `realm serve` constrain generation with, and
//! print it; with `--text`, say whether the grammar allows a text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use realm_models::Grammar;

/// The flags that constrain generation to a grammar (`realm run`, `realm
/// chat`, `realm grammar`): one of them at most.
#[derive(Debug, Clone, clap::Args)]
pub struct ConstraintArgs {
    /// Constrain the output to this GBNF grammar (llama.cpp's format).
    #[arg(long, group = "constraint")]
    pub grammar: Option<String>,
    /// Constrain the output to the GBNF grammar in this file.
    #[arg(long, group = "constraint")]
    pub grammar_file: Option<PathBuf>,
    /// Constrain the output to JSON documents of this JSON schema (`{}`:
    /// any JSON value).
    #[arg(short = 'j', long, group = "constraint")]
    pub json_schema: Option<String>,
    /// Constrain the output to JSON documents of the schema in this file.
    #[arg(long, group = "constraint")]
    pub json_schema_file: Option<PathBuf>,
}

impl ConstraintArgs {
    /// The grammar the flags ask for, if any.
    pub fn grammar(&self) -> Result<Option<Arc<Grammar>>> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let text = |inline: &Option<String>, file: &Option<PathBuf>| match (inline, file) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(path)) => read(path).map(Some),
            (None, None) => Ok(None),
        };
        let grammar = match (
            text(&self.grammar, &self.grammar_file)?,
            text(&self.json_schema, &self.json_schema_file)?,
        ) {
            (Some(g), _) => Grammar::parse(&g)?,
            (None, Some(s)) => {
                let schema: serde_json::Value =
                    serde_json::from_str(&s).context("the JSON schema is not JSON")?;
                Grammar::from_json_schema(&schema)?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(Arc::new(grammar)))
    }
}

/// Arguments of `realm grammar`.
#[derive(Debug, clap::Args)]
pub struct GrammarArgs {
    /// The grammar or schema.
    #[command(flatten)]
    pub source: ConstraintArgs,
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
