//! kernel-lab: `cargo xtask` turns a recipe into a ready, boot-tested Linux kernel lab.

mod bench;
mod boottest;
mod busybox;
mod cli;
mod cpio;
mod doctor;
mod download;
mod e2e;
mod extract;
mod fetch;
#[cfg(test)]
mod golden;
mod hash;
mod kbuild;
mod kconfig;
mod kexplain;
mod lab;
mod labscripts;
mod layout;
mod lock;
mod manifest;
mod mirror;
mod pipeline;
mod progress;
mod ready;
mod recipe;
mod releases;
mod repro;
mod rootfs;
mod serve;
mod source;
#[cfg(test)]
mod testutil;
mod verify;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Command, LabAction, RootfsAction};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // The chain reads stage by stage: `fetch linux-6.12.117: verify sha256: expected .., got ..`.
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let sh = xshell::Shell::new()?;
    let layout = layout::Layout::from_env()?;
    match cli.command {
        Command::Kernel(args) => pipeline::kernel_command(&sh, &layout, &args),
        Command::Fetch(args) => {
            let plan = pipeline::fetch_plan(&layout, &args)?;
            let s = fetch::run(&layout, &plan)?;
            println!("linux {}: {}", s.lock.kernel.version, s.kernel_src.display());
            println!("busybox {}: {}", s.lock.busybox.version, s.busybox_src.display());
            Ok(())
        }
        Command::Mirror(args) => mirror::command(&sh, &layout, &args),
        Command::Serve(args) => serve::serve_forever(args.dir, &args.bind),
        Command::Rootfs(args) => match args.action {
            Some(RootfsAction::List { file }) => {
                let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("read {}: {e}", file.display()))?;
                print!("{}", cpio::list(&bytes).map_err(|e| e.context(format!("list {}", file.display())))?);
                Ok(())
            }
            Some(RootfsAction::Unpack { file, dir }) => {
                let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("read {}: {e}", file.display()))?;
                cpio::unpack(&bytes, &dir).map_err(|e| e.context(format!("unpack {} into {}", file.display(), dir.display())))
            }
            Some(RootfsAction::Repack { dir, file }) => {
                let r = cpio::repack(&dir)?;
                cpio::write_file(&r.archive, r.mtime, r.gzip, &file)
            }
            None => pipeline::rootfs_command(&sh, &layout, &args.build),
        },
        Command::BootTest(args) => pipeline::boot_test_command(&layout, &args),
        Command::Doctor => doctor::run(),
        Command::E2e(args) => e2e::run(&sh, &layout, &args),
        Command::Config(args) => pipeline::config_command(&sh, &layout, &args.action),
        Command::Lab(args) => match args.action {
            LabAction::Pack { which, out, index, level } => {
                let dir = which.dir(&layout);
                let packed = ready::pack(&dir, &out, level)?;
                println!("packed {} ({:.1} MB, sha256 {})", packed.path.display(), packed.size as f64 / 1e6, packed.sha256);
                if let Some(index) = index {
                    ready::update_index(&index, &packed)?;
                    println!("index {}", index.display());
                }
                Ok(())
            }
            LabAction::Fetch { what, sha256, index, force } => {
                ready::fetch(&layout, &ready::FetchRequest { what, sha256, index, force }).map(|_| ())
            }
            LabAction::List => ready::list(&layout),
            LabAction::Rm { name } => ready::remove(&layout, &name),
        },
        Command::Bench(args) => bench::run(&sh, &layout, &args),
        Command::Verify(args) => {
            let dir = args.which.dir(&layout);
            let mirror = match &args.mirror {
                Some(url) => source::Mirror::new(url)?,
                None => source::Mirror::upstream(),
            };
            let trust = repro::Trust {
                mirror,
                keyring: args.keyring.clone(),
                busybox_keyring: args.busybox_keyring.clone(),
                insecure_skip_signature: args.insecure_skip_signature,
            };
            let outcome = repro::verify(&sh, &layout, &dir, &trust, &args.make.plan(), args.keep)?;
            if outcome.differing > 0 {
                anyhow::bail!("verify {}: {} difference(s) from the manifest", dir.display(), outcome.differing);
            }
            Ok(())
        }
    }
}
