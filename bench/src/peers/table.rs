//! The side-by-side table: each row a peer's figure with its durability promise, ours measured right
//! after it, and the ratio us ÷ peer.

use crate::stats::Samples;

/// Which way a figure is better, to say who is faster in words beside the ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput: jobs per second.
    Higher,
    /// Latency or time to finish.
    Lower,
}

/// `us ÷ peer`, with who is faster; "—" when either side has no figure.
pub fn ratio(ours: f64, peer: f64, better: Better) -> String {
    if !(ours.is_finite() && peer.is_finite()) || ours <= 0.0 || peer <= 0.0 {
        return "—".into();
    }
    let r = ours / peer;
    let faster = match better {
        Better::Higher => r > 1.0,
        Better::Lower => r < 1.0,
    };
    let word = if (r - 1.0).abs() < 0.005 {
        "even"
    } else if faster {
        "us faster"
    } else {
        "peer faster"
    };
    format!("{r:.2} ({word})")
}

pub fn latency(s: &Samples) -> String {
    format!(
        "median {:.2} ms, p99 {:.2} ms",
        s.median_ms(),
        s.pct_ms(99.0)
    )
}

pub struct Row {
    pub figure: String,
    /// The peer's name and version and what it promises.
    pub peer: String,
    pub peer_result: String,
    pub ours: String,
    pub ratio: String,
    pub command: String,
}

#[derive(Default)]
pub struct Table(pub Vec<Row>);

impl Table {
    pub fn add(&mut self, row: Row) {
        eprintln!(
            "  {}: {} — {} | us: {} | us ÷ peer {}",
            row.figure, row.peer, row.peer_result, row.ours, row.ratio
        );
        self.0.push(row);
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| figure | peer, and what it promises | peer | us (reply after fsync) | us ÷ peer | command |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.0 {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | `{}` |\n",
                r.figure,
                r.peer,
                r.peer_result,
                r.ours,
                r.ratio,
                r.command.replace('|', "\\|")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_ours_over_the_peers_and_says_who_is_faster() {
        assert_eq!(ratio(3000.0, 1000.0, Better::Higher), "3.00 (us faster)");
        assert_eq!(ratio(500.0, 1000.0, Better::Higher), "0.50 (peer faster)");
        assert_eq!(ratio(1.5, 3.0, Better::Lower), "0.50 (us faster)");
        assert_eq!(ratio(6.0, 3.0, Better::Lower), "2.00 (peer faster)");
        assert_eq!(ratio(1000.0, 1001.0, Better::Higher), "1.00 (even)");
    }

    #[test]
    fn a_missing_figure_gives_no_ratio() {
        assert_eq!(ratio(f64::NAN, 3.0, Better::Lower), "—");
        assert_eq!(ratio(3.0, 0.0, Better::Higher), "—");
    }

    #[test]
    fn the_table_is_markdown_with_one_line_per_row() {
        let mut t = Table::default();
        t.add(Row {
            figure: "enqueue, 1 client".into(),
            peer: "p 1.0 — fsync".into(),
            peer_result: "100/s".into(),
            ours: "300/s".into(),
            ratio: ratio(300.0, 100.0, Better::Higher),
            command: "a | b".into(),
        });
        let md = t.markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2],
            "| enqueue, 1 client | p 1.0 — fsync | 100/s | 300/s | 3.00 (us faster) | `a \\| b` |"
        );
    }
}
