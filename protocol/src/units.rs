//! How the API writes amounts: storage and network totals in decimal GB, memory in GiB
//! (how RAM is sold), rates in Mbit/s, every figure rounded to two decimals.

/// Bytes in a (decimal) gigabyte: storage, as disks are sold.
pub const GB: f64 = 1e9;
/// Bytes in a gibibyte: memory, as RAM is sold.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// `x` rounded to two decimals, as every figure in the API.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Bytes per second as megabits per second.
pub fn mbps(bytes_per_s: f64) -> f64 {
    bytes_per_s * 8.0 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_round_to_two_decimals_and_rates_are_megabits() {
        assert_eq!(round2(1.234_9), 1.23);
        assert_eq!(round2(2.005_1), 2.01);
        assert_eq!(mbps(1_250_000.0), 10.0);
        assert_eq!(8.0 * GIB / GB, 8.589_934_592);
    }
}
