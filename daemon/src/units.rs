//! Durations and sizes as settings write them ("30s", "5m", "12GiB", "75%"), and the
//! machine's physical memory they may be relative to.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// "250ms", "30s", "5m", "2h", or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    let value: f64 = number.parse().with_context(|| format!("{text:?} is not a duration like 30s, 5m or 0"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => bail!("unknown duration unit {other:?} in {text:?} (ms, s, m, h)"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// "75%" of physical memory, "12GiB", "800MB", "512MiB", or a number of bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        let percent: f64 = percent.trim().parse().with_context(|| format!("{text:?} is not a percentage"))?;
        if !(0.0..=100.0).contains(&percent) {
            bail!("{text:?}: a percentage must be within 0-100");
        }
        return Ok((physical_memory() as f64 * percent / 100.0) as u64);
    }
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().with_context(|| format!("{text:?} is not a size like 12GiB or 75%"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown size unit {other:?} in {text:?} (B, MB, GB, MiB, GiB, %)"),
    };
    Ok((value * scale) as u64)
}

/// Physical memory in bytes (sysconf), or 8 GiB when it cannot be read.
pub fn physical_memory() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages > 0 && page_size > 0 {
        pages as u64 * page_size as u64
    } else {
        8 << 30
    }
}
