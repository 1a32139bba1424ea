//! Progress bars: one look for every long step.
//!
//! Every bar draws to stderr, so stdout stays clean for what the commands print (paths, plans),
//! and starts with the step's label right-aligned in one column, so bars of successive steps line up.

use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Width of the label column; fits `linux-6.12.117.tar.xz`-sized names.
const LABEL: &str = "{prefix:>20}";

/// A bar counting bytes (downloads, decompression): size, rate and ETA. `total` may be unknown
/// at first (a download learns it from Content-Length); set it with `set_length`.
pub fn bytes(label: &str, total: Option<u64>) -> ProgressBar {
    bar(label, total, "[{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
}

/// A bar counting work items (kbuild steps): count, rate, ETA and the current item as message.
pub fn objects(label: &str, total: u64) -> ProgressBar {
    bar(label, Some(total), "[{bar:30}] {pos}/{len} objects {per_sec} eta {eta} {wide_msg}")
}

/// A ticking spinner for steps whose length nobody knows (configure); the message names the sub-step.
pub fn spinner(label: &str) -> ProgressBar {
    let bar = bar(label, None, "{spinner} {msg} [{elapsed}]");
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Every bar of the process, one under the other: busybox builds beside the kernel, and two bars
/// drawing to stderr on their own would overwrite each other's line.
fn screen() -> &'static MultiProgress {
    static SCREEN: OnceLock<MultiProgress> = OnceLock::new();
    SCREEN.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

fn bar(label: &str, total: Option<u64>, rest: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!("{LABEL} {rest}")).expect("valid progress template").progress_chars("=> ");
    let bar = screen().add(ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden()).with_style(style));
    bar.set_prefix(label.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_keeps_the_label() {
        // `with_template` errors are only found at run time; building each bar proves the templates.
        let bars = [bytes("linux.tar.xz", Some(10)), bytes("busybox.tar.bz2", None), objects("build", 3), spinner("configure")];
        let prefixes: Vec<String> = bars.iter().map(ProgressBar::prefix).collect();
        assert_eq!(prefixes, ["linux.tar.xz", "busybox.tar.bz2", "build", "configure"]);
        let lengths: Vec<Option<u64>> = bars.iter().map(ProgressBar::length).collect();
        assert_eq!(lengths, [Some(10), None, Some(3), None]);
        bars.iter().for_each(ProgressBar::finish_and_clear);
    }
}
