//! kernel-lab: `cargo xtask` turns a recipe into a ready Linux kernel lab.
#![allow(dead_code)]

mod cpio;
mod download;
mod extract;
mod kconfig;
mod layout;
mod recipe;
mod rootfs;
mod verify;

fn main() -> anyhow::Result<()> {
    Ok(())
}
