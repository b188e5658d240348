//! Kubernetes resource quantities ("100m", "1.5", "128Mi", "1e9") as integers.

/// Parses a quantity into thousandths (`milli` true: CPU) or units (memory, counts), rounding
/// up as upstream does when a value has more precision than the unit holds. None for text that
/// is not a quantity, or a value too large to hold.
pub fn parse(text: &str, milli: bool) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() {
        return None;
    }
    let (mantissa_scale, exponent): (f64, i32) = match suffix {
        "" => (1.0, 0),
        "n" => (1.0, -9),
        "u" => (1.0, -6),
        "m" => (1.0, -3),
        "k" => (1.0, 3),
        "M" => (1.0, 6),
        "G" => (1.0, 9),
        "T" => (1.0, 12),
        "P" => (1.0, 15),
        "E" => (1.0, 18),
        "Ki" => (1024.0, 0),
        "Mi" => (1024f64.powi(2), 0),
        "Gi" => (1024f64.powi(3), 0),
        "Ti" => (1024f64.powi(4), 0),
        "Pi" => (1024f64.powi(5), 0),
        "Ei" => (1024f64.powi(6), 0),
        s if s.starts_with(['e', 'E']) => (1.0, s[1..].parse().ok()?),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    let scaled = value * mantissa_scale * 10f64.powi(exponent) * if milli { 1000.0 } else { 1.0 };
    let rounded = scaled.ceil();
    if !rounded.is_finite() || rounded.abs() > i64::MAX as f64 / 2.0 {
        return None;
    }
    Some(rounded as i64)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn cpu_and_memory_forms() {
        assert_eq!(parse("100m", true), Some(100));
        assert_eq!(parse("2", true), Some(2000));
        assert_eq!(parse("0.5", true), Some(500));
        assert_eq!(parse("1.5", true), Some(1500));
        assert_eq!(parse("128Mi", false), Some(128 * 1024 * 1024));
        assert_eq!(parse("1G", false), Some(1_000_000_000));
        assert_eq!(parse("1e3", false), Some(1000));
        assert_eq!(parse("110", false), Some(110));
        assert_eq!(parse("1.5Gi", false), Some(1536 * 1024 * 1024));
        assert_eq!(parse("", false), None);
        assert_eq!(parse("lots", false), None);
        assert_eq!(parse("5Xi", false), None);
    }
}
