//! Printing helpers every command shares: JSON on stdout, byte counts
//! for people.

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A byte count for people: `1.5G`, `64K`, `512`.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];
    for (u, shift) in UNITS {
        if bytes >= 1 << shift {
            let v = bytes as f64 / (1u64 << shift) as f64;
            return if bytes % (1 << shift) == 0 {
                format!("{}{u}", bytes >> shift)
            } else {
                format!("{v:.1}{u}")
            };
        }
    }
    bytes.to_string()
}
