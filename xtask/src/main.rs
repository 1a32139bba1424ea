//! kernel-lab: `cargo xtask` turns a recipe into a ready, boot-tested Linux kernel lab.

mod bench;
mod boottest;
mod busybox;
mod cli;
mod cpio;
mod doctor;
mod download;
mod e2e;
mod exec;
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
mod mitigations;
mod modules;
mod patch;
mod pipeline;
mod programs;
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

use cli::{Cli, Command, RootfsAction};

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
        Command::Exec(args) => exec::command(&sh, &layout, &args),
        Command::Doctor => doctor::run(),
        Command::E2e(args) => e2e::run(&sh, &layout, &args),
        Command::Config(args) => pipeline::config_command(&sh, &layout, &args.action),
        Command::Lab(args) => ready::command(&layout, args.action),
        Command::Bench(args) => bench::run(&sh, &layout, &args),
        Command::Verify(args) => repro::command(&sh, &layout, &args),
    }
}
