//! Reading values out of a Prometheus text exposition.

/// The value of the sample `series` (a metric name, with its labels exactly as exposed, e.g.
/// `board_daemon_instances{phase="ready"}`) in `text`, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        line.strip_prefix(series)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text = "# HELP x y\nx_total 3\nx{a=\"b\"} 1.5\nx_total_more 9\n";
        assert_eq!(sample(text, "x_total"), Some(3.0));
        assert_eq!(sample(text, "x{a=\"b\"}"), Some(1.5));
        assert_eq!(sample(text, "x{a=\"c\"}"), None);
    }
}
